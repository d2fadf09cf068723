"""LensFlow: open up vision-language models for interpretability research.

The domain modules (config, hooks, pooling, adapters, extraction, ...) import no Dagster. The
code location's `defs` is loaded on first access, so `import lens_assets.hooks` in a notebook
stays light while `dagster dev` and `-m lens_assets` still find it.
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
