"""Art style (after BLINK's art-style task, as used by Fu et al. 2025): which candidate shares
the reference's style?

Simple procedural landscapes (sky, hills, sun, houses, trees) are drawn in four styles:
pointillism (dots of colour on paper), hatching (ink lines whose density follows darkness),
flat (a few posterised colours with dark outlines) and watercolour (soft, bleeding washes on
grainy paper). Each item is four images, as the study asks it: a reference and candidates A, B
and C (second to fourth). The reference of item i shows scene i // len(styles) in style
styles[i % len(styles)], so reference styles are balanced and every scene is a reference in
every style: an analysis can ask whether features group by style (across scenes) or by content
(across styles). Of the candidates, exactly one is in the reference's style, showing a scene
of its own; one (the "lure") shows the reference's own scene in another style, so content alone
points the wrong way; the third shows another scene in another style. Correct letters are
balanced (each run of three items uses A, B and C once).

Labels: `style` and `scene` (the reference's), `answer` (the correct letter), `lure` (the
letter showing the reference's scene), and per candidate `a_style` ..., `a_scene` ... (scenes
drawn for one item only are named "item{i}-{k}") and `a_image` ... (its index among the
sample's images: 1, 2, 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lens_assets.data.generators.samples import Question, Sample
from lens_assets.data.generators.textures import value_noise

Style = Literal["pointillism", "hatching", "flat", "watercolour"]
STYLES: tuple[Style, ...] = ("pointillism", "hatching", "flat", "watercolour")
LETTERS = ("A", "B", "C")
QUESTION = (
    "The first image is a reference; the second, third and fourth images are candidates A, B "
    "and C, in that order. Which candidate is painted in the same style as the reference? "
    "Answer A, B or C."
)
PAPER = (246, 241, 228)
INK = (34, 32, 48)


# The styles shown are concepts; the item and scene ids, the answer and lure letters and image
# indices are not.
CONCEPTS = ("style", "a_style", "b_style", "c_style")


class Params(BaseModel):
    """YAML keys of an `art_style` dataset."""

    model_config = ConfigDict(extra="forbid")

    styles: list[Style] = Field(default_factory=lambda: list(STYLES))
    image_size: int = Field(128, ge=64, le=512)

    @field_validator("styles")
    @classmethod
    def _two_styles(cls, value: list[Style]) -> list[Style]:
        if len(set(value)) < 2:
            raise ValueError("styles must name at least two different styles")
        return value


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, *keys])


def _colour(rng: np.random.Generator, low: int = 30, high: int = 230) -> tuple[int, int, int]:
    r, g, b = rng.integers(low, high, size=3)
    return int(r), int(g), int(b)


def scene(seed: int, index: int, size: int, *keys: int) -> Image.Image:
    """A simple landscape: sky gradient, sun, hills, ground, and a few houses and trees.
    Scene `index` is a reference scene; with `keys`, a scene drawn for one item only."""
    rng = _rng(seed, 2, index, *keys)
    horizon = int(size * rng.uniform(0.45, 0.65))
    top, low = np.array(_colour(rng, 60, 240)), np.array(_colour(rng, 120, 250))
    t = np.linspace(0, 1, horizon)[:, None]
    sky = (top * (1 - t) + low * t).astype(np.uint8)
    image = Image.new("RGB", (size, size), _colour(rng, 40, 160))
    image.paste(Image.fromarray(np.repeat(sky[:, None, :], size, axis=1)), (0, 0))
    draw = ImageDraw.Draw(image)
    sun = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.3) * size, rng.uniform(0.06, 0.12) * size
    draw.ellipse(
        (sun[0] - sun[2], sun[1] - sun[2], sun[0] + sun[2], sun[1] + sun[2]),
        fill=_colour(rng, 180, 255),
    )
    for layer in range(2):
        xs = np.linspace(-0.1, 1.1, 7) * size
        ys = horizon - rng.uniform(0.05, 0.3, size=7) * size * (1.0 - 0.4 * layer)
        draw.polygon(
            [(xs[0], horizon), *zip(xs, ys, strict=True), (xs[-1], horizon)],
            fill=_colour(rng, 30, 200),
        )
    for _ in range(int(rng.integers(2, 5))):
        _thing(draw, rng, size, horizon)
    return image


def _thing(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, horizon: int) -> None:
    """A house or a tree standing on the ground."""
    x = rng.uniform(0.1, 0.9) * size
    base = horizon + rng.uniform(0.05, 0.3) * size
    scale = size * rng.uniform(0.08, 0.16)
    if rng.random() < 0.5:
        draw.rectangle((x - scale, base - scale * 1.2, x + scale, base), fill=_colour(rng))
        roof = [(x - scale * 1.2, base - scale * 1.2), (x + scale * 1.2, base - scale * 1.2)]
        draw.polygon([*roof, (x, base - scale * 2.2)], fill=_colour(rng))
        draw.rectangle(
            (x - scale * 0.25, base - scale * 0.6, x + scale * 0.25, base), fill=_colour(rng)
        )
    else:
        draw.rectangle(
            (x - scale * 0.2, base - scale * 1.4, x + scale * 0.2, base), fill=_colour(rng, 40, 120)
        )
        radius = scale * 0.9
        draw.ellipse(
            (x - radius, base - scale * 2.6, x + radius, base - scale * 1.0),
            fill=_colour(rng, 20, 160),
        )


# --- styles -------------------------------------------------------------------------------


def pointillism(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Round dots of (slightly jittered, saturated) scene colour on paper, gaps left bare."""
    size = image.width
    pixels = np.asarray(image, dtype=np.float64)
    canvas = Image.new("RGB", image.size, PAPER)
    draw = ImageDraw.Draw(canvas)
    count = size * size // 7
    xs, ys = rng.uniform(0, size, count), rng.uniform(0, size, count)
    radii = rng.uniform(1.0, 2.2, count)
    jitter = rng.normal(0, 14, size=(count, 3))
    for x, y, r, dj in zip(xs, ys, radii, jitter, strict=True):
        colour = pixels[int(y), int(x)]
        colour = np.clip(colour + 0.35 * (colour - colour.mean()) + dj, 0, 235)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in colour))
    return canvas


def hatching(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Ink on paper only: darker regions get more line families (/, \\, -, |)."""
    size = image.width
    light = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    ys, xs = np.mgrid[0:size, 0:size]
    spacing = int(rng.integers(4, 6))
    shift = int(rng.integers(spacing))
    families = (
        (xs + ys + shift) % spacing == 0,
        (xs - ys + shift) % spacing == 0,
        (ys + shift) % spacing == 0,
        (xs + shift) % spacing == 0,
    )
    ink = np.zeros((size, size), dtype=bool)
    for threshold, lines in zip((0.7, 0.5, 0.32, 0.18), families, strict=True):
        ink |= (light < threshold) & lines
    edges = np.asarray(image.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float64) > 40
    ink |= edges
    out = np.where(ink[..., None], np.array(INK, np.uint8), np.array(PAPER, np.uint8))
    return Image.fromarray(out.astype(np.uint8))


def flat(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A handful of flat colours (median-cut palette) with dark outlines between them."""
    colours = int(rng.integers(5, 8))
    poster = image.quantize(
        colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    indices = np.asarray(poster)
    outline = np.zeros(indices.shape, dtype=bool)
    outline[1:] |= indices[1:] != indices[:-1]
    outline[:, 1:] |= indices[:, 1:] != indices[:, :-1]
    pixels = np.asarray(poster.convert("RGB")).copy()
    pixels[outline] = INK
    return Image.fromarray(pixels)


def watercolour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Soft washes: wobbled and blurred colour, lightened towards paper, darker pooled edges."""
    size = image.width
    pixels = np.asarray(image, dtype=np.float64)
    # Wobble: sample the scene through a smooth random displacement.
    dx = (value_noise(rng, size, 6, 1)[..., 0] - 0.5) * size * 0.05
    dy = (value_noise(rng, size, 6, 1)[..., 0] - 0.5) * size * 0.05
    ys, xs = np.mgrid[0:size, 0:size]
    sx = np.clip(np.rint(xs + dx), 0, size - 1).astype(int)
    sy = np.clip(np.rint(ys + dy), 0, size - 1).astype(int)
    wobbled = Image.fromarray(pixels[sy, sx].astype(np.uint8))
    soft = np.asarray(wobbled.filter(ImageFilter.GaussianBlur(size / 64)), dtype=np.float64)
    blurrier = np.asarray(wobbled.filter(ImageFilter.GaussianBlur(size / 24)), dtype=np.float64)
    pooled = soft - 0.6 * np.clip(blurrier - soft, 0, None)  # pigment gathers at edges
    wash = 0.7 * pooled + 0.3 * np.array(PAPER)
    grain = (value_noise(rng, size, size // 3, 1) - 0.5) * 24
    return Image.fromarray(np.clip(np.rint(wash + grain), 0, 255).astype(np.uint8))


RENDERERS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "pointillism": pointillism,
    "hatching": hatching,
    "flat": flat,
    "watercolour": watercolour,
}


def _answers(size: int, seed: int) -> list[str]:
    """Correct letters, balanced: every run of three items uses each letter once."""
    answers = []
    for block in range(0, size, len(LETTERS)):
        order = _rng(seed, 1, block).permutation(len(LETTERS))
        answers += [LETTERS[int(i)] for i in order]
    return answers[:size]


def _candidates(
    params: Params, index: int, answer: str, seed: int
) -> list[tuple[str, int, tuple[int, ...]]]:
    """(style, scene index, scene keys) of candidates A-C: the reference's style on a scene of
    its own, the reference's scene in another style (the lure), another scene in another."""
    style, scene_index = params.styles[index % len(params.styles)], index // len(params.styles)
    rng = _rng(seed, 4, index)
    others = sorted({s for s in params.styles if s != style}, key=params.styles.index)
    picked = rng.permutation(len(others))
    lure_style, other_style = others[int(picked[0])], others[int(picked[-1])]
    wrong = [(lure_style, scene_index, ()), (other_style, index, (2,))]
    wrong = [wrong[int(i)] for i in rng.permutation(2)]
    correct = (style, index, (1,))
    slot = LETTERS.index(answer)
    return [*wrong[:slot], correct, *wrong[slot:]]


def _scene_name(index: int, keys: tuple[int, ...]) -> str:
    return f"item{index}-{keys[0]}" if keys else str(index)


def generate(params: Params, size: int, seed: int) -> Iterator[Sample]:
    """Item i: the reference (scene i // len(styles) in style i % len(styles)), then A-C."""
    count = len(params.styles)
    for index, answer in enumerate(_answers(size, seed)):
        style, scene_index = params.styles[index % count], index // count
        base = scene(seed, scene_index, params.image_size)
        images = [RENDERERS[style](base, _rng(seed, 3, index))]
        labels = {"item": str(index), "style": style, "scene": str(scene_index), "answer": answer}
        candidates = _candidates(params, index, answer, seed)
        for slot, (letter, (kind, where, keys)) in enumerate(zip(LETTERS, candidates, strict=True)):
            picture = base if not keys else scene(seed, where, params.image_size, *keys)
            images.append(RENDERERS[kind](picture, _rng(seed, 3, index, slot + 1)))
            key = letter.lower()
            labels[f"{key}_style"] = kind
            labels[f"{key}_scene"] = _scene_name(where, keys)
            labels[f"{key}_image"] = str(slot + 1)
            if not keys:
                labels["lure"] = letter
        yield Sample(
            name=f"{index:05d}-{style}",
            images=images,
            labels=labels,
            questions=[Question(QUESTION, answer, "art_style", "answer", choices=LETTERS)],
            split=style,
        )
