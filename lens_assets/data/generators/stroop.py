"""Stroop colour conflict: a colour WORD written in a FONT colour on a BACKGROUND colour.

The VLM-Lens Stroop study asks which cue a representation follows when the lexical cue (the
word), the font colour and the background colour disagree. Each image shows one upper-case
colour word (e.g. "RED") centred in DejaVu Sans Bold, the font matplotlib ships (so rendering
never depends on the system's fonts), in one palette colour on another. The background is
never the font colour, or the word would be invisible.

Labels: `word`, `font`, `background` (palette names, lower case) and `congruence`, one of

- ``congruent``: word == font, background differs;
- ``word_background``: word == background, font differs;
- ``incongruent``: word, font and background all differ.

Balancing scheme (`plan`), for ``size`` images, a palette of K colours and the M classes in
`Params.classes`:

1. The palette order is shuffled with the seed, so which colours get the leftover counts (and
   which combinations occur) changes from seed to seed.
2. Class sizes are ``size // M``, and ``size % M`` classes, picked with the seed, get one more:
   the classes are balanced within 1.
3. Words run round the shuffled palette without restarting between classes: the first class
   takes words 0, 1, ..., n1 - 1 (mod K), the next carries on from n1, and so on. Over the
   whole dataset every colour is a word ``size // K`` or ``size // K + 1`` times, and within
   each class likewise (n_c // K or + 1).
4. Within each class the fonts and the backgrounds are permutations of that class's own words,
   chosen at random (shuffle, then repair by swaps) under the class's rule: a congruent
   image's font is its word and its background another image's word, never its own; a
   word_background image the other way round; an incongruent image takes one other word as
   font and another, different from both, as background. So the fonts, and the backgrounds,
   have exactly the colour counts of the words, per class and overall: every colour appears
   within 1 as often as every other as word, as font and as background, in the whole dataset
   and inside each congruence class. The pairings are random, so within a class the font is
   not a function of the word (seed 0, 480 images: 55 of the 56 possible incongruent word/font
   pairs occur).
5. Where that is impossible (tiny classes, e.g. an incongruent class of 2 images; or palettes
   of 3 to 5 colours, where the incongruent rule leaves too few choices) the same is tried
   with one pool of all images (overall balance only), and only failing that do the
   offending images take the least-used allowed colour for that role. With the default
   8-colour palette every size from 0 to 400 was checked to be within 1 both overall and per
   class. With 3 colours some sizes stay off by 2 overall (any size not a multiple of 3 when
   all images are incongruent, since each image's background is then fixed by its word and
   font).
6. The images are finally shuffled with the seed.

Everything is drawn from `random.Random(seed)`, never from global state, and the text is laid
out with Pillow's BASIC engine, so the same (params, size, seed) give the same PNG bytes.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import matplotlib
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lens_assets.data.generators.samples import Question, Sample

RGB = tuple[int, int, int]

# Saturated, well-separated colours (no two closer than 100 in RGB distance), so the nearest
# palette entry to a rendered pixel is never in doubt.
COLOURS: dict[str, RGB] = {
    "red": (210, 20, 40),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (255, 225, 0),
    "purple": (150, 50, 190),
    "orange": (245, 125, 0),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "pink": (255, 130, 190),
    "brown": (120, 70, 20),
    "grey": (150, 150, 150),
    "cyan": (0, 200, 220),
}
DEFAULT_PALETTE = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")

Congruence = Literal["congruent", "word_background", "incongruent"]
CLASSES: tuple[Congruence, ...] = ("congruent", "word_background", "incongruent")
CONCEPTS = ("word", "font", "background", "congruence")  # every label is a cue to probe

# The font comes from matplotlib's package data, never from the system, so every machine with
# the same matplotlib renders the same glyphs.
FONT_PATH = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
# Share of the image width and height left empty on each side of the longest word.
MARGIN = 0.08
# Random restarts per grouping before a looser one is tried (see `_assign`).
ATTEMPTS = 8


class Params(BaseModel):
    """YAML keys of a `stroop` dataset besides kind, size and seed."""

    model_config = ConfigDict(extra="forbid")

    palette: list[str] = Field(default_factory=lambda: list(DEFAULT_PALETTE))
    classes: list[Congruence] = Field(default_factory=lambda: list(CLASSES))
    width: int = Field(160, ge=32, le=2048)
    height: int = Field(96, ge=32, le=2048)
    # Which questions each image is asked, each its own row: one per cue, and VLM-Lens's
    # Stroop prompt ("stroop"). Fewer questions, fewer forward passes.
    questions: list[Literal["font", "background", "word", "stroop"]] = Field(
        default_factory=lambda: ["font", "background", "word", "stroop"], min_length=1
    )

    @model_validator(mode="after")
    def _check(self) -> Params:
        unknown = [name for name in self.palette if name not in COLOURS]
        if unknown:
            raise ValueError(f"unknown colours {unknown}; known: {', '.join(COLOURS)}")
        if len(set(self.palette)) != len(self.palette):
            raise ValueError("palette colours must be unique")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be a non-empty list without repeats")
        # Background must differ from font; incongruent needs a third, different word.
        needed = 3 if "incongruent" in self.classes else 2
        if len(self.palette) < needed:
            raise ValueError(f"palette needs at least {needed} colours for {self.classes}")
        return self


@dataclass(frozen=True)
class Combo:
    """The ground truth of one image, before rendering."""

    word: str
    font: str
    background: str
    congruence: Congruence


# ---------------------------------------------------------------- balancing


def _class_sizes(classes: list[Congruence], size: int, rng: random.Random) -> list[int]:
    """Equal shares, the remainder to random classes, so no class is favoured across seeds."""
    base, extra = divmod(size, len(classes))
    lucky = set(rng.sample(range(len(classes)), extra))
    return [base + (index in lucky) for index in range(len(classes))]


def _swap_partner(
    slot: int, values: list[int], allowed: Callable[[int, int], bool], rng: random.Random
) -> int | None:
    """A slot whose value fits `slot` and which accepts `slot`'s value in return.

    Random probes first (they almost always succeed at once), then a full scan, so repairing
    a shuffle costs about linear time yet never misses an existing partner.
    """
    n = len(values)
    probes = [rng.randrange(n) for _ in range(min(n, 32))]
    for other in itertools.chain(probes, range(n)):  # lazily: the scan is rarely reached
        if allowed(slot, values[other]) and allowed(other, values[slot]):
            return other
    return None


def _permute(
    values: list[int], allowed: Callable[[int, int], bool], rng: random.Random
) -> list[int | None]:
    """A random arrangement of `values` with slot i holding a value allowed(i, v).

    Shuffles, then swaps each offending slot with a partner that keeps both valid (each swap
    fixes one slot and breaks none). Slots that cannot be fixed come back as None, for the
    least-used fallback; a multiset of values is kept wherever the constraints allow.
    """
    arranged = list(values)
    rng.shuffle(arranged)
    for slot in range(len(arranged)):
        if allowed(slot, arranged[slot]):
            continue
        other = _swap_partner(slot, arranged, allowed, rng)
        if other is not None:
            arranged[slot], arranged[other] = arranged[other], arranged[slot]
    return [value if allowed(slot, value) else None for slot, value in enumerate(arranged)]


def _assign_group(
    members: list[int], words: list[int], kinds: list[Congruence], rng: random.Random
) -> tuple[dict[int, int | None], dict[int, int | None]]:
    """Fonts and backgrounds for a group of images: permutations of the group's own words.

    Congruent images keep their word as font, word_background images as background; the
    other slots share out the group's words at random under the class rules, so the group's
    fonts and backgrounds have the colour counts of its words (gaps aside).
    """
    fonts: dict[int, int | None] = {i: words[i] for i in members if kinds[i] == "congruent"}
    free = [i for i in members if kinds[i] != "congruent"]
    arranged = _permute([words[i] for i in free], lambda s, v: v != words[free[s]], rng)
    fonts.update(zip(free, arranged, strict=True))
    backgrounds: dict[int, int | None] = {
        i: words[i] for i in members if kinds[i] == "word_background"
    }
    free = [i for i in members if kinds[i] != "word_background"]
    arranged = _permute(
        [words[i] for i in free], lambda s, v: v not in (words[free[s]], fonts[free[s]]), rng
    )
    backgrounds.update(zip(free, arranged, strict=True))
    return fonts, backgrounds


def _assign(
    groupings: list[list[list[int]]], words: list[int], kinds: list[Congruence], rng: random.Random
) -> tuple[list[int | None], list[int | None]]:
    """The first gap-free assignment, trying each grouping ATTEMPTS times, in order.

    Per-class groups come first (balance inside each class as well as overall), then one
    pooled group (overall balance only); failing both, the try with the fewest gaps.
    """
    best: tuple[int, list[int | None], list[int | None]] | None = None
    for groups in groupings:
        for _ in range(ATTEMPTS):
            fonts: list[int | None] = [None] * len(words)
            backgrounds: list[int | None] = [None] * len(words)
            for members in groups:
                group_fonts, group_backgrounds = _assign_group(members, words, kinds, rng)
                for i in members:
                    fonts[i], backgrounds[i] = group_fonts[i], group_backgrounds[i]
            gaps = fonts.count(None) + backgrounds.count(None)
            if gaps == 0:
                return fonts, backgrounds
            if best is None or gaps < best[0]:
                best = (gaps, fonts, backgrounds)
    assert best is not None, "groupings must not be empty"
    return best[1], best[2]


def _least_used(counts: Counter[int], forbidden: set[int], k: int, rng: random.Random) -> int:
    """The fallback colour: the least used so far in that role, ties broken at random."""
    choices = [colour for colour in range(k) if colour not in forbidden]
    lowest = min(counts[colour] for colour in choices)
    return rng.choice([colour for colour in choices if counts[colour] == lowest])


def _fill_gaps(
    words: list[int],
    fonts: list[int | None],
    backgrounds: list[int | None],
    k: int,
    rng: random.Random,
) -> tuple[list[int], list[int]]:
    """Give the slots no permutation could fill their least-used allowed colour."""
    font_counts = Counter(font for font in fonts if font is not None)
    for index, font in enumerate(fonts):
        if font is None:
            forbidden = {words[index]} | {b for b in [backgrounds[index]] if b is not None}
            fonts[index] = _least_used(font_counts, forbidden, k, rng)
            font_counts[fonts[index]] += 1
    background_counts = Counter(b for b in backgrounds if b is not None)
    for index, background in enumerate(backgrounds):
        if background is None:
            forbidden = {words[index], fonts[index]}
            backgrounds[index] = _least_used(background_counts, forbidden, k, rng)
            background_counts[backgrounds[index]] += 1
    return [int(f) for f in fonts if f is not None], [int(b) for b in backgrounds if b is not None]


def plan(params: Params, size: int, seed: int) -> list[Combo]:
    """The word, font, background and class of every image, balanced as the docstring says."""
    rng = random.Random(seed)
    palette = list(params.palette)
    rng.shuffle(palette)
    k = len(palette)
    kinds: list[Congruence] = []
    for kind, count in zip(params.classes, _class_sizes(params.classes, size, rng), strict=True):
        kinds += [kind] * count
    words = [index % k for index in range(size)]  # one run round the palette, class by class
    per_class = [[i for i in range(size) if kinds[i] == kind] for kind in params.classes]
    fonts, backgrounds = _assign([per_class, [list(range(size))]], words, kinds, rng)
    filled_fonts, filled_backgrounds = _fill_gaps(words, fonts, backgrounds, k, rng)
    combos = [
        Combo(palette[w], palette[f], palette[b], kind)
        for w, f, b, kind in zip(words, filled_fonts, filled_backgrounds, kinds, strict=True)
    ]
    rng.shuffle(combos)
    return combos


def congruence_of(word: str, font: str, background: str) -> Congruence:
    """The class a (word, font, background) triple belongs to, from the colours alone."""
    if font == background:
        raise ValueError("font and background must differ")
    if word == font:
        return "congruent"
    if word == background:
        return "word_background"
    return "incongruent"


# ---------------------------------------------------------------- rendering


@lru_cache(maxsize=64)
def load_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans Bold at `size`, laid out by Pillow's BASIC engine.

    BASIC rather than Raqm: Raqm is optional in Pillow builds, and the two can kern
    differently, which would change the bytes from one machine to the next.
    """
    return ImageFont.truetype(str(FONT_PATH), size, layout_engine=ImageFont.Layout.BASIC)


def text_of(colour: str) -> str:
    """The word drawn for a colour: its name in capitals, as in the classic Stroop task."""
    return colour.upper()


@lru_cache(maxsize=64)
def _fitted_size(palette: tuple[str, ...], width: int, height: int) -> int:
    """The largest font size at which every palette word fits inside the margins."""
    room_x, room_y = width * (1 - 2 * MARGIN), height * (1 - 2 * MARGIN)
    best = 4
    low, high = 4, height
    while low <= high:  # ink size grows with font size, so bisect
        middle = (low + high) // 2
        boxes = [load_font(middle).getbbox(text_of(c)) for c in palette]
        if all(b[2] - b[0] <= room_x and b[3] - b[1] <= room_y for b in boxes):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best


def font_size(params: Params) -> int:
    """One size for the whole dataset, set by the longest word, so size never hints the word."""
    return _fitted_size(tuple(params.palette), params.width, params.height)


def render(word: str, font: str, background: str, params: Params) -> Image.Image:
    """The word's ink box centred on the background, at integer offsets (reproducible)."""
    image = Image.new("RGB", (params.width, params.height), COLOURS[background])
    face = load_font(font_size(params))
    text = text_of(word)
    left, top, right, bottom = face.getbbox(text)
    x = (params.width - (right - left)) // 2 - left
    y = (params.height - (bottom - top)) // 2 - top
    ImageDraw.Draw(image).text((x, y), text, fill=COLOURS[font], font=face)
    return image


def questions(combo: Combo, asked: Sequence[str] = ("font", "background", "word", "stroop")
              ) -> list[Question]:  # fmt: skip
    """One question per cue, so behaviour can be scored against each cue separately."""
    every = {
        "font": Question("What is the font colour of the word?", combo.font, "attribute", "font"),
        "background": Question(
            "What is the background colour?", combo.background, "attribute", "background"
        ),
        "word": Question("What word is written?", combo.word, "attribute", "word"),
        # VLM-Lens's Stroop prompt; naming the ink (font) colour is the Stroop task.
        "stroop": Question(
            "Describe the color in this image in one word.", combo.font, "stroop", "font"
        ),
    }
    return [every[name] for name in asked]


def generate(params: Params, size: int, seed: int) -> Iterator[Sample]:
    """The planned images in order, rendered lazily so a large dataset never sits in memory."""
    for index, combo in enumerate(plan(params, size, seed)):
        yield Sample(
            name=f"{index:05d}-{combo.word}-{combo.font}-{combo.background}",
            image=render(combo.word, combo.font, combo.background, params),
            labels={
                "word": combo.word,
                "font": combo.font,
                "background": combo.background,
                "congruence": combo.congruence,
            },
            questions=questions(combo, params.questions),
        )
