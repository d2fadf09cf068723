"""A concept image set of colours, as VLM-Lens's concept workflow uses one: pictures that are
mostly one colour, named `<colour>_<nn>` the way VLM-Lens names its concept images.

Each picture is one palette colour (the Stroop palette, so the concepts are the colour names the
Stroop labels use) with per-pixel jitter and a few darker and lighter blotches, at one of several
sizes: the colour is the one thing every picture of a concept shares. Label: `colour`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lens_assets.data.generators.samples import Sample
from lens_assets.data.generators.stroop import COLOURS, DEFAULT_PALETTE

SIZES = ((48, 48), (64, 40), (40, 64), (56, 56))
# The labels that are concepts to probe.
CONCEPTS = ("colour",)


class Params(BaseModel):
    """YAML keys of a `colour_patches` dataset besides kind, size (pictures in all, dealt round
    the palette) and seed."""

    model_config = ConfigDict(extra="forbid")

    palette: list[str] = Field(default_factory=lambda: list(DEFAULT_PALETTE), min_length=2)
    jitter: int = Field(24, ge=0, le=80, description="Per-pixel noise, in RGB levels.")

    @field_validator("palette")
    @classmethod
    def _known(cls, palette: list[str]) -> list[str]:
        unknown = [c for c in palette if c not in COLOURS]
        if unknown or len(set(palette)) != len(palette):
            raise ValueError(
                f"palette must name distinct colours of {sorted(COLOURS)}; got {palette}"
            )
        return palette


def patch(
    rgb: tuple[int, int, int], size: tuple[int, int], jitter: int, rng: np.random.Generator
) -> Image.Image:
    """One picture of a colour: noise around it, plus a few blotches of a darker or lighter
    shade, so no two pictures of a concept are alike."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.int16)
    pixels[:] = rgb
    pixels += rng.integers(-jitter, jitter + 1, size=pixels.shape, dtype=np.int16)
    for _ in range(rng.integers(1, 4)):
        w, h = rng.integers(width // 6, width // 2), rng.integers(height // 6, height // 2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        pixels[y : y + h, x : x + w] += int(rng.integers(-40, 41))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def generate(params: Params, size: int, seed: int) -> Iterator[Sample]:
    rng = np.random.default_rng(seed)
    for index in range(size):
        colour = params.palette[index % len(params.palette)]
        number = index // len(params.palette) + 1
        picture = patch(COLOURS[colour], SIZES[int(rng.integers(len(SIZES)))], params.jitter, rng)
        yield Sample(name=f"{colour}_{number:02d}", image=picture, labels={"colour": colour})
