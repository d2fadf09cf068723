"""The architecture registry: each name maps to its adapter and an example hub id.

Adding a family that transformers supports natively is one entry here with the generic
adapter; a family-specific adapter only where the family truly differs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from lens_assets.adapters.base import Adapter, ModelLayout, Sequences
from lens_assets.adapters.dual_encoder import DualEncoderAdapter
from lens_assets.adapters.qwen_vl import QWEN_VL

GENERIC = Adapter()


@dataclass(frozen=True)
class Architecture:
    name: str
    adapter: Adapter
    hub_example: str
    aliases: tuple[str, ...] = field(default=())


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("llava", GENERIC, "llava-hf/llava-1.5-7b-hf"),
        Architecture("qwen2-vl", QWEN_VL, "Qwen/Qwen2-VL-2B-Instruct", aliases=("qwen",)),
        Architecture("clip", DualEncoderAdapter(), "openai/clip-vit-base-patch32"),
    )
}
ALIASES: dict[str, str] = {
    alias: arch.name for arch in ARCHITECTURES.values() for alias in arch.aliases
}


class UnknownArchitectureError(ValueError):
    """An architecture name the registry does not know."""


def get_architecture(name: str) -> Architecture:
    key = ALIASES.get(name.lower(), name.lower())
    if key in ARCHITECTURES:
        return ARCHITECTURES[key]
    known = sorted([*ARCHITECTURES, *ALIASES])
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownArchitectureError(
        f"unknown architecture {name!r}{hint}; known architectures: {', '.join(known)}"
    )


__all__ = [
    "ARCHITECTURES",
    "Adapter",
    "Architecture",
    "ModelLayout",
    "Sequences",
    "UnknownArchitectureError",
    "get_architecture",
]
