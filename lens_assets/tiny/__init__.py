"""Tiny offline checkpoints of real VLM architectures, for tests and demos without hub access.

Each builder turns a preset into ``(model class, config, processor)`` using the real transformers
classes; ``build_tiny`` seeds torch, constructs the model on CPU in float32 with the model's own
random init, and writes model and processor with ``save_pretrained``.  The folder then loads
through the same ``from_pretrained(folder)`` path a hub id takes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedConfig, PreTrainedModel, ProcessorMixin

from . import clip, llava, qwen2_vl

__all__ = ["TINY_PRESETS", "build_tiny", "tiny_architectures"]

TINY_PRESETS = ("tiny", "small", "base")

Builder = Callable[[str], tuple[type[PreTrainedModel], PreTrainedConfig, ProcessorMixin]]

_BUILDERS: dict[str, Builder] = {
    "llava": llava.build,
    "qwen2-vl": qwen2_vl.build,
    "clip": clip.build,
}


def tiny_architectures() -> list[str]:
    """Names accepted by :func:`build_tiny`."""
    return sorted(_BUILDERS)


def build_tiny(architecture: str, out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised checkpoint of ``architecture`` into ``out_dir``.

    The same ``seed`` gives a byte-identical ``model.safetensors``: the global RNG is forked (so
    the caller's random state is untouched) and seeded right before the model is constructed.
    """
    builder = _BUILDERS.get(architecture)
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
