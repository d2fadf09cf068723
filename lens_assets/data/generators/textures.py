"""Procedural textures and the marker font shared by the vision-centric generators.

Everything takes a `numpy.random.Generator`, so one seed gives the same bytes and no generator
touches global random state. Textures are busy on purpose: colour noise at several scales under
scattered random shapes makes every small patch of a scene distinctive, which is what point
correspondence needs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Scene pixels are kept inside this range so that pure marker colours (0 or 255 in a channel)
# never occur in a texture: a test, or an analysis, can then find markers by exact colour.
TEXTURE_MIN, TEXTURE_MAX = 16, 239
GRAIN = 36.0  # peak-to-peak amplitude of the fine grain laid over a whole scene


@cache
def font(size: int, bold: bool = True) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data, so labels look the same on every machine.

    A system font would differ between hosts (and so would the PNG bytes). The BASIC layout
    engine avoids a dependence on whether libraqm is installed. Without matplotlib, Pillow's
    bundled default font keeps generation working (with different bytes).
    """
    try:
        import matplotlib

        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
        return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def value_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Smooth random field in [0, 1] of shape (size, size, channels), `cells` blobs across.

    Random values on a coarse grid, upsampled bicubically by Pillow (fast and deterministic).
    """
    grid = rng.integers(0, 256, size=(cells + 1, cells + 1, channels), dtype=np.uint8)
    mode = "RGB" if channels == 3 else "L"
    coarse = Image.fromarray(grid if channels == 3 else grid[..., 0], mode)
    fine = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return (fine if channels == 3 else fine[..., None]) / 255.0


def fractal_noise(
    rng: np.random.Generator, size: int, octaves: tuple[int, ...] = (3, 6, 12, 24, 48)
) -> np.ndarray:
    """Colour noise summed over scales: coarse hue regions with fine grain inside them."""
    total = np.zeros((size, size, 3), dtype=np.float32)
    weight_sum = 0.0
    for level, cells in enumerate(octaves):
        weight = 0.7**level
        total += weight * value_noise(rng, size, cells)
        weight_sum += weight
    total /= weight_sum
    # Stretch contrast: a sum of noises clusters around the middle grey.
    low, high = np.percentile(total, [1, 99])
    return np.clip((total - low) / max(high - low, 1e-6), 0.0, 1.0)


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated-ish colour inside the texture range."""
    values = rng.integers(TEXTURE_MIN, TEXTURE_MAX + 1, size=3)
    values[rng.integers(3)] = rng.choice([TEXTURE_MIN + 10, TEXTURE_MAX - 10])
    return int(values[0]), int(values[1]), int(values[2])


def draw_random_shapes(
    rng: np.random.Generator, image: Image.Image, count: int, radius: tuple[int, int]
) -> None:
    """Scatter ellipses, boxes, triangles and thick strokes of random colour, in place.

    Sharp edges and corners at many scales give local features that noise alone lacks.
    """
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(count):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(*radius), rng.uniform(*radius)
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        colour = random_colour(rng)
        kind = int(rng.integers(4))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        elif kind == 2:
            angles = rng.uniform(0, 2 * np.pi, size=3)
            points = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]
            draw.polygon(points, fill=colour)
        else:
            # No rings: they would look like the correspondence markers.
            end = (cx + rng.uniform(-2, 2) * rx, cy + rng.uniform(-2, 2) * ry)
            draw.line(((cx, cy), end), fill=colour, width=max(1, int(min(rx, ry) / 2)))


def scene_texture(rng: np.random.Generator, size: int) -> Image.Image:
    """A square, busy, colourful scene whose small patches all look different.

    Values are clipped to [TEXTURE_MIN, TEXTURE_MAX] (see there for why).
    """
    noise = fractal_noise(rng, size)
    base = Image.fromarray((TEXTURE_MIN + noise * (TEXTURE_MAX - TEXTURE_MIN)).astype(np.uint8))
    area = size * size
    draw_random_shapes(rng, base, count=max(8, area // 1400), radius=(size / 80, size / 16))
    draw_random_shapes(rng, base, count=max(8, area // 400), radius=(1.5, size / 90 + 2))
    # Fine grain over everything, so that no patch (not even inside a flat shape) is uniform.
    grain = value_noise(rng, size, max(4, size // 4)) - 0.5
    pixels = np.asarray(base, dtype=np.float32) + GRAIN * grain
    return clip_to_texture_range(Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)))


def clip_to_texture_range(image: Image.Image) -> Image.Image:
    """Clamp every channel to [TEXTURE_MIN, TEXTURE_MAX] so marker colours stay unique."""
    pixels = np.asarray(image.convert("RGB"))
    return Image.fromarray(np.clip(pixels, TEXTURE_MIN, TEXTURE_MAX).astype(np.uint8))
