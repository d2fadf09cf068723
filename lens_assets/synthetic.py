"""Small synthetic pictures for the demo and tests: coloured shapes on plain backgrounds.

Sizes and aspect ratios vary on purpose, so batches mix image shapes (and, for dynamic
resolution models, numbers of image tokens). Same seed, same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (173, 35, 35),
    "green": (29, 105, 20),
    "blue": (42, 75, 215),
    "yellow": (255, 238, 51),
}
SHAPES = ("square", "circle", "triangle")
SIZES = ((48, 48), (64, 40), (40, 72), (96, 64), (56, 56), (80, 48))


def draw_shape(size: tuple[int, int], colour: str, shape: str, background: int) -> Image.Image:
    image = Image.new("RGB", size, (background,) * 3)
    draw = ImageDraw.Draw(image)
    width, height = size
    side = int(min(width, height) * 0.6)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(
            [(left, top + side), (left + side, top + side), (left + side // 2, top)], fill=fill
        )
    return image


@dataclass(frozen=True)
class RenderedImage:
    path: Path
    labels: dict[str, str]


def render_shapes(out_dir: str | Path, count: int = 12, seed: int = 0) -> list[RenderedImage]:
    """Write `count` PNGs named by index; returns their paths and ground-truth labels."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rendered = []
    for index in range(count):
        colour = list(COLOURS)[index % len(COLOURS)]
        shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
        size = SIZES[rng.randrange(len(SIZES))]
        image = draw_shape(size, colour, shape, background=rng.randrange(90, 200))
        path = out / f"{index:03d}-{colour}-{shape}.png"
        image.save(path, format="PNG")
        rendered.append(RenderedImage(path, {"colour": colour, "shape": shape}))
    return rendered
