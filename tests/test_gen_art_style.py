"""The art-style generator's labels, checked against its pixels.

Each style leaves a measurable fingerprint: hatching is two exact colours (ink and paper), flat
is a handful of colours, pointillism leaves bare paper between its dots, watercolour is smooth
with many colours and no bare paper. A rule on those statistics must recover every label. And
content is shared across styles: a picture's coarse layout matches its own scene in the other
styles better than other scenes.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lens_assets.data.generators import art_style, generate, params_model

SIZE, SEED = 48, 3
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
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
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
    with pytest.raises(ValueError):
        art_style.Params(styles=["cubism"])


def test_labels_balanced_and_scenes_shared(samples: list) -> None:
    styles = [s.labels["style"] for s in samples]
    assert Counter(styles) == dict.fromkeys(art_style.STYLES, SIZE // 4)
    for index, sample in enumerate(samples):
        assert sample.split == sample.labels["style"]
        assert sample.labels["scene"] == str(index // 4)
        (question,) = sample.questions
        assert question.answer == sample.labels["style"] and question.kind == "art_style"


def test_style_is_recoverable_from_pixels(samples: list) -> None:
    for sample in samples:
        assert _style_from_pixels(sample.image) == sample.labels["style"], sample.name


def _layout(image: Image.Image) -> np.ndarray:
    """Coarse colour layout (8x8, per channel), standardised."""
    small = np.asarray(image.convert("RGB").resize((8, 8), Image.Resampling.BOX), float)
    flat = small.reshape(-1)
    return (flat - flat.mean()) / (flat.std() + 1e-6)


def test_content_is_shared_across_styles(samples: list) -> None:
    """A picture's nearest other-style picture, by coarse layout, is mostly its own scene."""
    layouts = [_layout(s.image) for s in samples]
    hits = 0
    for i, sample in enumerate(samples):
        candidates = [
            j for j, other in enumerate(samples) if other.labels["style"] != sample.labels["style"]
        ]
        best = max(candidates, key=lambda j: float(layouts[i] @ layouts[j]))
        hits += samples[best].labels["scene"] == sample.labels["scene"]
    assert hits / len(samples) > 0.75


def test_deterministic_and_seed_dependent() -> None:
    params = art_style.Params()
    first = [_png(s.image) for s in generate("art_style", params, 8, 1)]
    assert first == [_png(s.image) for s in generate("art_style", params, 8, 1)]
    other = [_png(s.image) for s in generate("art_style", params, 8, 2)]
    assert all(a != b for a, b in zip(first, other, strict=True))
