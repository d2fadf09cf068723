"""Synthetic datasets with known ground truth, rendered offline: a registry of generators.

Each generator is a module with a pydantic `Params` model (its YAML keys besides `kind`,
`size` and `seed`) and `generate(params, size, seed) -> Iterator[Sample]`. The same seed gives
the same images, byte for byte.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from lens_assets.data.generators.samples import Question, Sample

# kind -> module; modules are imported on first use, so one broken generator cannot stop the
# others from loading.
GENERATORS: dict[str, str] = {
    "shapes": "lens_assets.data.generators.shapes",
    "clevr_lite": "lens_assets.data.generators.clevr_lite",
    "stroop": "lens_assets.data.generators.stroop",
    "correspondence": "lens_assets.data.generators.correspondence",
    "odd_one_out": "lens_assets.data.generators.odd_one_out",
    "art_style": "lens_assets.data.generators.art_style",
    "colour_patches": "lens_assets.data.generators.colour_patches",
}
__all__ = [
    "GENERATORS",
    "Question",
    "Sample",
    "concepts",
    "generate",
    "generator",
    "params_model",
]


def generator(kind: str) -> ModuleType:
    if kind not in GENERATORS:
        raise KeyError(f"unknown generator {kind!r}; known: {', '.join(sorted(GENERATORS))}")
    return importlib.import_module(GENERATORS[kind])


def params_model(kind: str) -> type[BaseModel]:
    return generator(kind).Params


def concepts(kind: str) -> tuple[str, ...] | None:
    """The labels a generator declares concepts to probe (its `CONCEPTS`), or None when it
    declares none (probing then judges each label by its values)."""
    declared = getattr(generator(kind), "CONCEPTS", None)
    return None if declared is None else tuple(declared)


def generate(kind: str, params: BaseModel, size: int, seed: int) -> Iterator[Sample]:
    module: Any = generator(kind)
    return module.generate(params, size, seed)
