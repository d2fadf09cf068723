"""The art-style generator's labels, checked against its pixels.

Each style leaves a measurable fingerprint: hatching is two exact colours (ink and paper), flat
is a handful of colours, pointillism leaves bare paper between its dots, watercolour is smooth
with many colours and no bare paper. A rule on those statistics must recover every style label,
of the reference and of each candidate, and so the answer. And content is shared across styles:
a reference's coarse layout matches its own scene in the other styles better than other scenes,
and the lure candidate is the reference's scene.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.data.generators import art_style, generate, params_model

SIZE, SEED = 24, 3
LETTERS = ("A", "B", "C")
PAPER = (246, 241, 228)


@pytest.fixture(scope="module")
def samples() -> list:
    return list(generate("art_style", art_style.Params(), SIZE, SEED))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _style_from_pixels(image: Image.Image) -> str:
    """Name the style from pixel statistics alone."""
    pixels = np.asarray(image.convert("RGB"))
    packed = pixels.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    colours = len(np.unique(packed))
    paper = np.all(pixels == PAPER, axis=-1).mean()
    if colours == 2:
        return "hatching"
    if colours <= 10:
        return "flat"
    return "pointillism" if paper > 0.03 else "watercolour"


def test_params_and_registry() -> None:
    assert params_model("art_style") is art_style.Params
    with pytest.raises(ValueError):
        art_style.Params(styles=[])
    with pytest.raises(ValueError):  # one style leaves no wrong candidate
        art_style.Params(styles=["flat", "flat"])
    with pytest.raises(ValueError):
        art_style.Params(styles=["cubism"])


def test_a_reference_then_three_lettered_candidates(samples: list) -> None:
    styles = [s.labels["style"] for s in samples]
    assert Counter(styles) == dict.fromkeys(art_style.STYLES, SIZE // 4)
    assert Counter(s.labels["answer"] for s in samples) == dict.fromkeys(LETTERS, SIZE // 3)
    for index, sample in enumerate(samples):
        labels = sample.labels
        assert sample.image is None and len(sample.images) == len(sample.pictures()) == 4
        assert all(image.size == (128, 128) for image in sample.images)
        assert sample.split == labels["style"]
        assert labels["scene"] == str(index // 4)
        assert [labels[f"{k}_image"] for k in "abc"] == ["1", "2", "3"]
        (question,) = sample.questions
        assert question.kind == "art_style" and question.answer == labels["answer"]
        assert question.choices == LETTERS and question.answer in question.choices
        assert question.images is None
        # exactly one candidate shares the reference's style: the answer
        same = [c for c in LETTERS if labels[f"{c.lower()}_style"] == labels["style"]]
        assert same == [labels["answer"]]
        # the lure is the reference's scene in another style; the others are their own scenes
        lure = labels["lure"]
        assert lure != labels["answer"]
        assert labels[f"{lure.lower()}_scene"] == labels["scene"]
        scenes = [labels[f"{c.lower()}_scene"] for c in LETTERS if c != lure]
        assert len(set(scenes)) == 2 and all(s.startswith(f"item{index}-") for s in scenes)
        wrong = {labels[f"{c.lower()}_style"] for c in LETTERS if c != labels["answer"]}
        assert len(wrong) == 2 and labels["style"] not in wrong


def test_styles_and_answers_are_recoverable_from_pixels(samples: list) -> None:
    for sample in samples:
        seen = [_style_from_pixels(image) for image in sample.images]
        labels = sample.labels
        assert seen == [labels["style"], *(labels[f"{c}_style"] for c in "abc")], sample.name
        (question,) = sample.questions
        assert LETTERS[seen[1:].index(seen[0])] == question.answer


def _layout(image: Image.Image) -> np.ndarray:
    """Coarse colour layout (8x8, per channel), standardised."""
    small = np.asarray(image.convert("RGB").resize((8, 8), Image.Resampling.BOX), float)
    flat = small.reshape(-1)
    return (flat - flat.mean()) / (flat.std() + 1e-6)


def test_content_is_shared_across_styles(samples: list) -> None:
    """A reference's nearest other-style reference, by coarse layout, is mostly its own scene;
    among the candidates, the lure (its own scene) is mostly the nearest."""
    layouts = [_layout(s.images[0]) for s in samples]
    hits = lured = 0
    for i, sample in enumerate(samples):
        candidates = [
            j for j, other in enumerate(samples) if other.labels["style"] != sample.labels["style"]
        ]
        best = max(candidates, key=lambda j: float(layouts[i] @ layouts[j]))
        hits += samples[best].labels["scene"] == sample.labels["scene"]
        scores = [float(layouts[i] @ _layout(image)) for image in sample.images[1:]]
        lured += LETTERS[int(np.argmax(scores))] == sample.labels["lure"]
    assert hits / len(samples) > 0.75
    assert lured / len(samples) > 0.75


def _pngs(samples) -> list[bytes]:
    return [_png(image) for sample in samples for image in sample.images]


def test_deterministic_and_seed_dependent() -> None:
    params = art_style.Params(image_size=64)
    first = _pngs(generate("art_style", params, 8, 1))
    assert len(first) == 32 and first == _pngs(generate("art_style", params, 8, 1))
    other = _pngs(generate("art_style", params, 8, 2))
    assert all(a != b for a, b in zip(first, other, strict=True))
    assert _pngs(generate("art_style", params, 10, 1))[:32] == first


def test_two_styles_still_give_one_right_candidate() -> None:
    params = art_style.Params(styles=["flat", "hatching"], image_size=64)
    for sample in generate("art_style", params, 6, 0):
        styles = [sample.labels[f"{c}_style"] for c in "abc"]
        assert styles.count(sample.labels["style"]) == 1
        assert styles[LETTERS.index(sample.labels["answer"])] == sample.labels["style"]


def test_collected_rows_show_reference_then_candidates(tmp_path) -> None:
    config = parse_dataset_config({"kind": "art_style", "size": 3, "image_size": 64}, "t")
    out = collect_images("art", config, tmp_path)
    assert len(out.rows) == 12 and len(out.items) == 3
    paths = {row["image_id"]: row["path"] for row in out.rows}
    for row in out.items:
        assert len(row.image_ids) == 4 and row.kind == "art_style"
        assert row.choices == LETTERS and row.answer == row.labels["answer"]
        seen = [_style_from_pixels(Image.open(paths[i])) for i in row.image_ids]
        assert seen[0] == row.labels["style"] == row.split
        assert LETTERS[seen[1:].index(seen[0])] == row.answer
