"""The Stroop generator: labels checked against the pixels, balance, determinism, font source."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw

from lens_assets.data.generators import generator, stroop

PARAMS = stroop.Params()
SIZE = 48
ROLES = ("word", "font", "background")


@pytest.fixture(scope="module")
def samples() -> list:
    return list(stroop.generate(PARAMS, SIZE, seed=0))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def nearest(rgb: np.ndarray) -> str:
    """The palette colour closest to an RGB value."""
    return min(PARAMS.palette, key=lambda name: np.linalg.norm(rgb - stroop.COLOURS[name]))


def ink_fraction(pixels: np.ndarray, font: str, background: str) -> np.ndarray:
    """How far each pixel lies from the background towards the font colour (0..1).

    An antialiased edge pixel is a blend bg + a * (font - bg), so this recovers the coverage a
    that Pillow rendered, whichever two colours were blended.
    """
    bg = np.array(stroop.COLOURS[background], dtype=float)
    direction = np.array(stroop.COLOURS[font], dtype=float) - bg
    return (pixels.astype(float) - bg) @ direction / (direction @ direction)


def crop(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def reference_mask(word: str) -> np.ndarray:
    """The word drawn here, white on black, with the generator's font file and size."""
    face = stroop.load_font(stroop.font_size(PARAMS))
    canvas = Image.new("L", (400, 200), 0)
    ImageDraw.Draw(canvas).text((50, 50), word.upper(), fill=255, font=face)
    return crop(np.asarray(canvas) > 127)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    return float((a & b).sum() / (a | b).sum())


def spread(counts: Counter, names: list[str]) -> int:
    values = [counts[name] for name in names]
    return max(values) - min(values)


def test_registered_and_font_from_matplotlib() -> None:
    assert generator("stroop") is stroop
    data = Path(matplotlib.get_data_path()).resolve()
    assert stroop.FONT_PATH.is_file()
    assert stroop.FONT_PATH.resolve().is_relative_to(data)
    assert stroop.FONT_PATH.name == "DejaVuSans-Bold.ttf"


def test_sample_shape_names_and_questions(samples) -> None:
    assert len(samples) == SIZE
    assert len({s.name for s in samples}) == SIZE
    for index, sample in enumerate(samples):
        labels = sample.labels
        assert set(labels) == {"word", "font", "background", "congruence"}
        assert (
            sample.name == f"{index:05d}-{labels['word']}-{labels['font']}-{labels['background']}"
        )
        assert sample.image.size == (PARAMS.width, PARAMS.height)
        assert sample.image.mode == "RGB"
        answers = {q.question: q.answer for q in sample.questions}
        assert answers["What is the font colour of the word?"] == labels["font"]
        assert answers["What is the background colour?"] == labels["background"]
        assert answers["What word is written?"] == labels["word"]
        assert answers["Describe the color in this image in one word."] == labels["font"]
        assert {q.kind for q in sample.questions} == {"attribute", "stroop"}
        # every answer is the value of the label concept the question names
        assert all(labels[q.concept] == q.answer for q in sample.questions)


def test_congruence_label_follows_the_colours(samples) -> None:
    for sample in samples:
        word, font, background, congruence = (sample.labels[k] for k in (*ROLES, "congruence"))
        assert font != background
        assert congruence == stroop.congruence_of(word, font, background)
        if congruence == "congruent":
            assert word == font
        elif congruence == "word_background":
            assert word == background != font
        else:
            assert len({word, font, background}) == 3


def test_background_label_is_the_border_colour(samples) -> None:
    for sample in samples:
        pixels = np.asarray(sample.image)
        expected = stroop.COLOURS[sample.labels["background"]]
        corners = [pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]]
        assert {nearest(c) for c in corners} == {sample.labels["background"]}
        # The text stays inside its margins: the whole border is untouched background.
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (border == expected).all(), sample.name


def test_font_label_is_the_dominant_ink_colour(samples) -> None:
    for sample in samples:
        pixels = np.asarray(sample.image).reshape(-1, 3).astype(int)
        background = np.array(stroop.COLOURS[sample.labels["background"]])
        ink = pixels[np.linalg.norm(pixels - background, axis=1) > 60]
        assert len(ink) > 200, sample.name  # large, legible text
        colours = Counter(map(tuple, ink))
        (mode, count), *_ = colours.most_common(1)
        assert count > len(ink) / 2, sample.name  # solid strokes dominate antialiased edges
        assert nearest(np.array(mode)) == sample.labels["font"], sample.name
        median = np.median(ink, axis=0)
        assert nearest(median) == sample.labels["font"], sample.name


def test_word_label_matches_the_glyphs(samples) -> None:
    references = {name: reference_mask(name) for name in PARAMS.palette}
    for sample in samples:
        labels = sample.labels
        fraction = ink_fraction(np.asarray(sample.image), labels["font"], labels["background"])
        mask = crop(fraction > 0.5)
        scores = {name: iou(mask, reference) for name, reference in references.items()}
        assert max(scores, key=scores.get) == labels["word"], (sample.name, scores)
        assert scores[labels["word"]] > 0.97, (sample.name, scores)


def test_ink_area_depends_on_the_word() -> None:
    short = np.asarray(stroop.render("red", "black", "white", PARAMS))
    long = np.asarray(stroop.render("orange", "black", "white", PARAMS))
    assert (short < 128).all(axis=2).sum() * 1.5 < (long < 128).all(axis=2).sum()


def test_balance_at_48(samples) -> None:
    labels = [s.labels for s in samples]
    assert Counter(label["congruence"] for label in labels) == dict.fromkeys(stroop.CLASSES, 16)
    for role in ROLES:
        # 48 images over 8 colours: exactly 6 each, as word, as font and as background.
        assert Counter(label[role] for label in labels) == dict.fromkeys(PARAMS.palette, 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balance_within_one_for_every_size(seed: int) -> None:
    for size in range(150):
        combos = stroop.plan(PARAMS, size, seed)
        assert len(combos) == size
        classes = Counter(c.congruence for c in combos)
        assert spread(classes, list(stroop.CLASSES)) <= 1, size
        for role in ROLES:
            assert spread(Counter(getattr(c, role) for c in combos), PARAMS.palette) <= 1
            for kind in stroop.CLASSES:  # and inside each congruence class
                counts = Counter(getattr(c, role) for c in combos if c.congruence == kind)
                assert spread(counts, PARAMS.palette) <= 1, (size, role, kind)


def test_small_and_custom_datasets_stay_valid() -> None:
    params = stroop.Params(palette=["red", "green", "blue"], width=128, height=128)
    for size in range(12):
        for combo in stroop.plan(params, size, seed=3):
            assert combo.font != combo.background
            assert combo.congruence == stroop.congruence_of(*(getattr(combo, r) for r in ROLES))
    sample = next(stroop.generate(params, 1, seed=0))
    assert sample.image.size == (128, 128)
    only = stroop.Params(classes=["incongruent"])
    assert {c.congruence for c in stroop.plan(only, 20, 0)} == {"incongruent"}


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        stroop.Params(palette=["red", "mauve", "blue"])
    with pytest.raises(ValueError):
        stroop.Params(palette=["red", "red", "blue"])
    with pytest.raises(ValueError):
        stroop.Params(palette=["red", "blue"])  # incongruent needs three colours
    stroop.Params(palette=["red", "blue"], classes=["congruent", "word_background"])
    with pytest.raises(ValueError):
        stroop.Params(unknown=1)


def test_same_seed_same_bytes_other_seed_differs(samples) -> None:
    again = list(stroop.generate(PARAMS, SIZE, seed=0))
    assert [s.name for s in again] == [s.name for s in samples]
    assert [png(s.image) for s in again] == [png(s.image) for s in samples]
    other = list(stroop.generate(PARAMS, SIZE, seed=1))
    assert [s.name for s in other] != [s.name for s in samples]
    assert [png(s.image) for s in other] != [png(s.image) for s in samples]
    combos = {(s.labels["word"], s.labels["font"], s.labels["background"]) for s in samples}
    assert combos != {(s.labels["word"], s.labels["font"], s.labels["background"]) for s in other}


def test_a_dataset_may_ask_only_some_questions_each_a_row(tmp_path: Path) -> None:
    from lens_assets.data.datasets import collect_images, parse_dataset_config

    config = parse_dataset_config({"kind": "stroop", "size": 6, "questions": ["stroop"]}, "t")
    collected = collect_images("stroop", config, tmp_path)
    assert len(collected.items) == 6
    assert {row.prompt for row in collected.items} == {
        "Describe the color in this image in one word."
    }
    assert all(row.answer == row.labels["font"] for row in collected.items)
