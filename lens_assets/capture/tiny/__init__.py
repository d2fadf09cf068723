"""Tiny offline checkpoints of real VLM architectures, for tests and demos without hub access.

Each builder turns a preset into ``(model class, config, processor)`` using the real transformers
classes; ``build_tiny`` seeds torch, constructs the model on CPU in float32 with the model's own
random init, and writes model and processor with ``save_pretrained``.  The folder then loads
through the same ``from_pretrained(folder)`` path a hub id takes.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedConfig, PreTrainedModel, ProcessorMixin

from lens_assets.capture.families import (
    FAMILIES,
    UnknownArchitectureError,
    get_family,
    require_packages,
)

__all__ = ["TINY_PRESETS", "build_tiny", "tiny_architectures"]

TINY_PRESETS = ("tiny", "small", "base")

Builder = Callable[[str], tuple[type[PreTrainedModel], PreTrainedConfig, ProcessorMixin]]


def _builder_module(tiny: str) -> str:
    return f"{__name__}.{tiny}"


def tiny_architectures() -> list[str]:
    """Family names :func:`build_tiny` can build (each family's builder is a module here)."""
    return sorted(
        family.name
        for family in FAMILIES
        if family.tiny and importlib.util.find_spec(_builder_module(family.tiny)) is not None
    )


def _builder(architecture: str) -> Builder | None:
    try:
        family = get_family(architecture)
    except UnknownArchitectureError:
        return None
    if family.name not in tiny_architectures():
        return None
    require_packages(family)
    return importlib.import_module(_builder_module(family.tiny)).build  # type: ignore[arg-type]


def build_tiny(architecture: str, out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised checkpoint of ``architecture`` into ``out_dir``.

    The same ``seed`` gives a byte-identical ``model.safetensors``: the global RNG is forked (so
    the caller's random state is untouched) and seeded right before the model is constructed.
    """
    builder = _builder(architecture)
    if builder is None:
        known = ", ".join(tiny_architectures())
        raise ValueError(f"unknown tiny architecture {architecture!r}; known: {known}")
    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(TINY_PRESETS)}")

    model_class, config, processor = builder(preset)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = model_class(config).to(torch.float32).eval()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
