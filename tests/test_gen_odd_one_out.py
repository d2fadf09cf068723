"""The odd-one-out generator's labels, checked against its pixels.

Each view is its own image (four per item, A-D in order), letters are read by template matching,
and each view is re-rendered with both of the item's objects: the labelled object must reproduce
the view exactly and the other object must not (its silhouette differs), so the odd view is the
one the *pixels* say shows another object. With `odd_colour` the odd view is also found from a
hue statistic alone.
"""

from __future__ import annotations

import io
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.data.generators import generate, odd_one_out, params_model
from lens_assets.data.generators.textures import font

SIZE, SEED = 48, 5
LETTERS = "ABCD"
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
CORNER = 20  # the letter sits inside this top-left square of a panel


@pytest.fixture(scope="module")
def params() -> odd_one_out.Params:
    return odd_one_out.Params()


@pytest.fixture(scope="module")
def samples(params: odd_one_out.Params) -> list:
    return list(generate("odd_one_out", params, SIZE, SEED))


def _box(labels: dict[str, str], letter: str) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in labels[f"{letter.lower()}_box"].split(","))
    return x0, y0, x1, y1


def _panel(sample, letter: str) -> np.ndarray:
    """The view `letter` of a sample: its image (label `a_image` ...), cropped to its box."""
    image = sample.images[int(sample.labels[f"{letter.lower()}_image"])]
    return np.asarray(image.crop(_box(sample.labels, letter)), dtype=np.int64)


def _silhouette(panel: np.ndarray) -> np.ndarray:
    """Non-background pixels (the background is the panel's bottom-right pixel's colour)."""
    mask = np.any(panel != panel[-1, -1], axis=-1)
    mask[:CORNER, :CORNER] = False  # the letter is not the object
    return mask


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    return np.count_nonzero(first & second) / max(np.count_nonzero(first | second), 1)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_params_and_registry() -> None:
    assert params_model("odd_one_out") is odd_one_out.Params
    with pytest.raises(ValueError):
        odd_one_out.Params(panels=3)
    with pytest.raises(ValueError):  # no gap: the views are separate images
        odd_one_out.Params(gap=4)


def test_four_labelled_images_per_item(samples: list, params) -> None:
    assert len(samples) == SIZE
    for index, sample in enumerate(samples):
        assert sample.name == f"{index:05d}" and sample.image is None
        assert len(sample.images) == len(sample.pictures()) == 4
        for image in sample.images:
            assert image.size == (params.panel_size,) * 2 and image.mode == "RGB"
        labels = sample.labels
        assert labels["item"] == str(index)
        assert [labels[f"{letter.lower()}_image"] for letter in LETTERS] == ["0", "1", "2", "3"]
        whole = (0, 0, params.panel_size, params.panel_size)
        assert all(_box(labels, letter) == whole for letter in LETTERS)
        objects = [labels[f"{letter.lower()}_object"] for letter in LETTERS]
        odd = labels["answer"]
        assert labels[f"{odd.lower()}_object"] == labels["odd_object"]
        assert objects.count(labels["common_object"]) == 3
        assert labels["odd_object"] != labels["common_object"]
        (question,) = sample.questions
        assert question.answer == odd and question.kind == "odd_one_out"
        assert question.choices == tuple(LETTERS) and question.answer in question.choices
        assert question.images is None
        assert "A, B, C or D" in question.question


def test_answers_balanced_and_objects_varied(samples: list) -> None:
    answers = Counter(s.labels["answer"] for s in samples)
    assert answers == dict.fromkeys(LETTERS, SIZE // 4)
    assert len({s.labels["common_object"] for s in samples}) >= 6


def _pngs(samples) -> list[bytes]:
    return [_png(image) for sample in samples for image in sample.images]


def test_deterministic_and_seed_dependent(params) -> None:
    first = _pngs(generate("odd_one_out", params, 4, 21))
    again = _pngs(generate("odd_one_out", params, 4, 21))
    other = _pngs(generate("odd_one_out", params, 4, 22))
    assert len(first) == 16 and first == again
    assert all(a != b for a, b in zip(first, other, strict=True))
    assert _pngs(generate("odd_one_out", params, 6, 21))[:16] == first


def test_collected_rows_show_the_four_views_in_order(tmp_path) -> None:
    config = parse_dataset_config({"kind": "odd_one_out", "size": 3, "panel_size": 48}, "t")
    out = collect_images("odd", config, tmp_path)
    assert len(out.rows) == 12 and len(out.items) == 3
    paths = {row["image_id"]: row["path"] for row in out.rows}
    for index, row in enumerate(out.items):
        assert len(row.image_ids) == 4 and row.kind == "odd_one_out"
        assert [Path(paths[i]).name for i in row.image_ids] == [
            f"{index:05d}-{view}.png" for view in range(4)
        ]
        assert row.choices == tuple(LETTERS) and row.answer == row.labels["answer"]
        assert row.prompt == odd_one_out.QUESTION
        assert all(Image.open(paths[i]).size == (48, 48) for i in row.image_ids)


@cache
def _template(letter: str, size: int) -> np.ndarray:
    canvas = Image.new("RGB", (40, 40), WHITE)
    ImageDraw.Draw(canvas).text((5, 5), letter, font=font(max(10, size // 8)), fill=BLACK)
    mask = np.all(np.asarray(canvas) == BLACK, axis=-1)
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _read_letter(panel: np.ndarray, size: int) -> str:
    """Best-matching letter among A-D in the panel's top-left corner (exact-black pixels)."""
    corner = np.all(panel[:CORNER, :CORNER] == BLACK, axis=-1)
    scores = {}
    for letter in LETTERS:
        template = _template(letter, size)
        h, w = template.shape
        scores[letter] = max(
            np.count_nonzero(corner[y : y + h, x : x + w] & template)
            / np.count_nonzero(corner[y : y + h, x : x + w] | template)
            for y in range(CORNER - h + 1)
            for x in range(CORNER - w + 1)
        )
    return max(scores, key=scores.__getitem__)


def test_each_panel_carries_its_letter(samples: list, params) -> None:
    for sample in samples[:12]:
        for letter in LETTERS:
            panel = _panel(sample, letter)
            assert _read_letter(panel, params.panel_size) == letter


def test_objects_fit_their_panels(samples: list) -> None:
    for sample in samples:
        for letter in LETTERS:
            panel = _panel(sample, letter)
            mask = np.any(panel != panel[-1, -1], axis=-1)
            assert not np.any(mask[0]) and not np.any(mask[-1])  # clear of the edges
            assert not np.any(mask[:, 0]) and not np.any(mask[:, -1])
            assert 0.04 < _silhouette(panel).mean() < 0.6, (sample.name, letter)


def test_pixels_show_the_labelled_objects(samples: list, params) -> None:
    """Analysis by synthesis: which of the two objects, seen from the panel's view, is it?

    The labelled object reproduces the panel pixel for pixel (outside the letter corner); the
    other one does not, and its silhouette visibly differs. So from pixels, three panels show
    one object and the `answer` panel shows the other.
    """
    items = odd_one_out.plan(params, SIZE, SEED)
    for sample, item in zip(samples, items, strict=True):
        explained = {}
        for letter, view, colour in zip(LETTERS, item.views, item.colours, strict=True):
            panel = _panel(sample, letter)
            panel[:CORNER, :CORNER] = panel[-1, -1]
            errors, ious = {}, {}
            for name, mesh in item.meshes.items():
                render = np.asarray(
                    odd_one_out.render_panel(
                        mesh, view, colour, item.background, params.panel_size
                    ),
                    dtype=np.int64,
                )
                render[:CORNER, :CORNER] = render[-1, -1]
                errors[name] = np.abs(render - panel).mean()
                ious[name] = _iou(_silhouette(render), _silhouette(panel))
            best = min(errors, key=errors.__getitem__)
            other = next(name for name in errors if name != best)
            assert errors[best] == 0.0, (sample.name, letter)
            # Seen from the same view, the other object looks clearly different.
            assert ious[other] < 0.95 and errors[other] > 2.5, (sample.name, letter, ious)
            explained[letter] = best
        assert explained == {
            letter: sample.labels[f"{letter.lower()}_object"] for letter in LETTERS
        }
        counts = Counter(explained.values())
        odd = next(letter for letter, name in explained.items() if counts[name] == 1)
        assert odd == sample.labels["answer"]


def test_common_views_really_differ(samples: list) -> None:
    """The three views of the common object are different pictures, not copies."""
    for sample in samples:
        common = [letter for letter in LETTERS if letter != sample.labels["answer"]]
        masks = [_silhouette(_panel(sample, letter)) for letter in common]
        ious = [_iou(masks[i], masks[j]) for i in range(3) for j in range(i + 1, 3)]
        assert max(ious) < 0.97, sample.name


def _mean_hue(panel: np.ndarray) -> complex:
    """Circular mean hue of the object's pixels (a unit complex number)."""
    pixels = panel[_silhouette(panel)].astype(float) / 255.0
    hsv = np.asarray(Image.fromarray((pixels[None] * 255).astype(np.uint8)).convert("HSV"))[0]
    angles = hsv[:, 0].astype(float) / 256.0 * 2 * np.pi
    mean = np.exp(1j * angles).mean()
    return mean / abs(mean)


def test_odd_colour_variant_is_solvable_from_hue_alone() -> None:
    params = odd_one_out.Params(odd_colour=True)
    for sample in generate("odd_one_out", params, 24, SEED):
        hues = {letter: _mean_hue(_panel(sample, letter)) for letter in LETTERS}
        spread = {
            letter: sum(abs(hues[letter] - hues[other]) for other in LETTERS) for letter in LETTERS
        }
        assert max(spread, key=spread.__getitem__) == sample.labels["answer"], sample.name
