"""Coloured shapes (square, circle, triangle) on plain grey backgrounds, of mixed sizes.

The smallest labelled set: sizes and aspect ratios vary on purpose, so batches mix image
shapes (and, for dynamic-resolution models, numbers of image tokens).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict

from lens_assets.data.generators.samples import Question, Sample

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (173, 35, 35),
    "green": (29, 105, 20),
    "blue": (42, 75, 215),
    "yellow": (255, 238, 51),
}
SHAPES = ("square", "circle", "triangle")
# The labels that are concepts to probe (every dataset kind may override them in its config).
CONCEPTS = ("colour", "shape")
SIZES = ((48, 48), (64, 40), (40, 72), (96, 64), (56, 56), (80, 48))


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def draw_shape(size: tuple[int, int], colour: str, shape: str, background: int) -> Image.Image:
    image = Image.new("RGB", size, (background,) * 3)
    draw = ImageDraw.Draw(image)
    width, height = size
    side = int(min(width, height) * 0.6)
    left, top = (width - side) // 2, (height - side) // 2
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle((left, top, left + side, top + side), fill=fill)
    elif shape == "circle":
        draw.ellipse((left, top, left + side, top + side), fill=fill)
    else:
        corners = [(left, top + side), (left + side, top + side), (left + side // 2, top)]
        draw.polygon(corners, fill=fill)
    return image


def generate(params: Params, size: int, seed: int) -> Iterator[Sample]:
    del params
    rng = random.Random(seed)
    for index in range(size):
        colour = list(COLOURS)[index % len(COLOURS)]
        shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
        image = draw_shape(SIZES[rng.randrange(len(SIZES))], colour, shape, rng.randrange(90, 200))
        yield Sample(
            name=f"{index:04d}-{colour}-{shape}",
            image=image,
            labels={"colour": colour, "shape": shape},
            questions=[Question("What colour is the shape?", colour, "attribute", "colour")],
        )
