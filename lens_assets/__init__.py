"""LensFlow: open up vision-language models for interpretability research.

The packages follow the data flow: `data` (datasets, images, generators) -> `capture` (hook
points, hooks, pooling, adapters, extraction) -> `resources` (runtime, warehouse) -> `analyses`
(probes, similarity, interpretability); `orchestration` wraps them as Dagster assets. The domain
packages import no Dagster. The code location's `defs` is loaded on first access, so
`import lens_assets.capture.hooks` in a notebook stays light while `dagster dev` and
`-m lens_assets` still find it.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from lens_assets.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
