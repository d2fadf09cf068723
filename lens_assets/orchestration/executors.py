"""Where steps run: local processes by default, or the workers of a Celery cluster.

`LENS_EXECUTOR=celery` sends every step to the workers listening on the broker named by
`LENS_CELERY_BROKER`; the executor's settings are `configs/executors/celery.yaml`, the same file
the workers start from, so the two cannot disagree. The Dagster code is identical either way.
"""

import os
from collections.abc import Callable

from dagster import ExecutorDefinition, multiprocess_executor

from lens_assets.config import ConfigError, configs_dir, read_yaml


def celery() -> ExecutorDefinition:
    try:
        from dagster_celery import celery_executor
    except ImportError:
        raise ConfigError(
            'LENS_EXECUTOR=celery needs the scale-out extra: pip install -e ".[scale]"'
        ) from None
    path = configs_dir() / "executors" / "celery.yaml"
    settings = read_yaml(path, "executor config")
    try:
        config = settings["execution"]["config"]
    except (KeyError, TypeError):
        raise ConfigError(f"executor config {path}: expected execution: config: ...") from None
    return celery_executor.configured(config, name="celery")


EXECUTORS: dict[str, Callable[[], ExecutorDefinition]] = {
    "multiprocess": lambda: multiprocess_executor,
    "celery": celery,
}


def executor_from_env() -> ExecutorDefinition:
    name = os.environ.get("LENS_EXECUTOR") or "multiprocess"
    if name not in EXECUTORS:
        raise ConfigError(
            f"LENS_EXECUTOR={name!r} is not an executor; choose from {', '.join(EXECUTORS)}"
        )
    return EXECUTORS[name]()
