"""The correspondence generator's labels, checked against its pixels.

Markers are found by exact colour (the scene texture never contains pure red or pure white),
letters are read by template matching, and the claimed correspondence is checked on the
unmarked scene texture: the patch around REF matches the patch around the correct candidate
(after undoing the labelled scale/rotation) far better than around any wrong candidate.
"""

from __future__ import annotations

import io
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.data.generators import correspondence, generate, params_model
from lens_assets.data.generators.textures import font

SIZE, SEED = 48, 7
LETTERS = "ABCD"
RED = (255, 0, 0)
WHITE = (255, 255, 255)
RING_OUTER = 6.0  # red ring radius 5 plus half a pixel of rasterisation slack (and the centre)


@pytest.fixture(scope="module")
def params() -> correspondence.Params:
    return correspondence.Params()


@pytest.fixture(scope="module")
def samples(params: correspondence.Params) -> list:
    return list(generate("correspondence", params, SIZE, SEED))


@pytest.fixture(scope="module")
def unmarked(params: correspondence.Params) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(labels, reference, target) without markers, for texture comparisons."""
    out = []
    for item in correspondence.plan(params, SIZE, SEED):
        reference, target = correspondence.render_pair(item, params, marked=False)
        out.append((correspondence.labels(item), _array(reference), _array(target)))
    return out


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def _mask(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.asarray(image.convert("RGB")) == colour, axis=-1)


def _point(labels: dict[str, str], prefix: str) -> tuple[int, int]:
    return int(labels[f"{prefix}_x"]), int(labels[f"{prefix}_y"])


class View:
    """One image of a sample with the sample's labels, as the pixel checks read them."""

    def __init__(self, sample, index: int) -> None:
        self.name, self.image, self.labels = sample.name, sample.images[index], sample.labels


def _pairs(samples: list) -> list[tuple[View, View]]:
    return [(View(sample, 0), View(sample, 1)) for sample in samples]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_params_defaults_and_registry() -> None:
    model = params_model("correspondence")
    assert model is correspondence.Params
    assert model().transforms == ["shift", "scale", "rotation", "lighting"]
    with pytest.raises(ValueError):
        model(transforms=[])
    with pytest.raises(ValueError):
        model(transforms=["shear"])


def test_one_sample_per_item_showing_reference_then_target(samples: list, params) -> None:
    assert len(samples) == SIZE
    for index, sample in enumerate(samples):
        assert sample.name == f"{index:05d}" and sample.image is None
        assert len(sample.images) == len(sample.pictures()) == 2
        assert [image.size for image in sample.images] == [(params.image_size,) * 2] * 2
        assert sample.labels["item"] == str(index)
        assert sample.labels["ref_image"] == "0" and sample.labels["candidates_image"] == "1"
        assert sample.split == sample.labels["transform"]
        (question,) = sample.questions
        assert question.kind == "correspondence" and question.answer == sample.labels["answer"]
        assert question.choices == tuple(LETTERS) and question.answer in question.choices
        assert question.images is None  # both images, reference first
        assert "REF" in question.question
        assert "first image" in question.question and "second image" in question.question


def test_transforms_cycle_and_answers_balance(samples: list) -> None:
    transforms = [s.labels["transform"] for s in samples]
    assert transforms[:4] == ["shift", "scale", "rotation", "lighting"]
    assert transforms == transforms[:4] * (SIZE // 4)
    answers = Counter(s.labels["answer"] for s in samples)
    assert answers == dict.fromkeys(LETTERS, SIZE // 4)
    for transform in set(transforms):
        per = Counter(s.labels["answer"] for s in samples if s.labels["transform"] == transform)
        assert per == dict.fromkeys(LETTERS, SIZE // 16)


def _pngs(samples) -> list[bytes]:
    return [_png(image) for sample in samples for image in sample.images]


def test_deterministic_and_seed_dependent(params) -> None:
    first = _pngs(generate("correspondence", params, 6, 11))
    again = _pngs(generate("correspondence", params, 6, 11))
    other = _pngs(generate("correspondence", params, 6, 12))
    assert len(first) == 12 and first == again
    assert all(a != b for a, b in zip(first, other, strict=True))
    # Item i does not depend on how many items were asked for.
    longer = _pngs(generate("correspondence", params, 8, 11))
    assert longer[:12] == first


def test_collected_rows_show_both_images_in_order(tmp_path) -> None:
    config = parse_dataset_config({"kind": "correspondence", "size": 4, "seed": 1}, "t")
    out = collect_images("pairs", config, tmp_path)
    assert len(out.rows) == 8 and len(out.items) == 4
    paths = {row["image_id"]: row["path"] for row in out.rows}
    for index, row in enumerate(out.items):
        assert len(row.image_ids) == 2 and row.kind == "correspondence"
        assert [Path(paths[i]).name for i in row.image_ids] == [
            f"{index:05d}-0.png",
            f"{index:05d}-1.png",
        ]
        assert row.choices == tuple(LETTERS) and row.answer == row.labels["answer"]
        assert row.prompt == correspondence.QUESTION
    # The first image is the reference (one ring, REF), the second the target (four, A-D).
    for row in out.items:
        rings = [
            ndimage.label(_mask(Image.open(paths[i]), RED), structure=np.ones((3, 3)))[1]
            for i in row.image_ids
        ]
        assert rings == [1, 4]


def test_ref_marker_is_where_the_labels_say(samples: list) -> None:
    for ref, _ in _pairs(samples):
        red = _mask(ref.image, RED)
        ys, xs = np.nonzero(red)
        x, y = _point(ref.labels, "ref")
        assert len(xs) > 20
        assert abs(xs.mean() - x) <= 0.5 and abs(ys.mean() - y) <= 0.5
        assert np.hypot(xs - x, ys - y).max() <= RING_OUTER  # no red anywhere else
        assert not red[y, x]  # hollow: the pointed-at pixel itself stays visible


def test_candidate_markers_are_where_the_labels_say(samples: list) -> None:
    for _, target in _pairs(samples):
        components, count = ndimage.label(_mask(target.image, RED), structure=np.ones((3, 3)))
        assert count == 4
        centres = ndimage.center_of_mass(np.ones_like(components), components, range(1, 5))
        for letter in LETTERS:
            x, y = _point(target.labels, letter.lower())
            nearest = min(np.hypot(cy - y, cx - x) for cy, cx in centres)
            assert nearest <= 0.5, (target.name, letter)
        points = [_point(target.labels, letter.lower()) for letter in LETTERS]
        for i, first in enumerate(points):
            assert min(first) >= 8 and max(first) <= target.image.width - 9
            for second in points[i + 1 :]:
                assert np.hypot(first[0] - second[0], first[1] - second[1]) >= 16


@cache
def _template(text: str) -> np.ndarray:
    """Exact-white pixels of `text` as the generator's font draws it (fill over a stroke)."""
    canvas = Image.new("RGB", (64, 32), (0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (8, 8), text, font=font(correspondence.FONT_SIZE), fill=WHITE, stroke_width=1
    )
    mask = _mask(canvas, WHITE)
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _best_iou(window: np.ndarray, template: np.ndarray) -> float:
    """Best intersection-over-union of `template` placed anywhere inside `window`."""
    height, width = template.shape
    best = 0.0
    for y in range(window.shape[0] - height + 1):
        for x in range(window.shape[1] - width + 1):
            region = window[y : y + height, x : x + width]
            overlap = np.count_nonzero(region & template)
            union = np.count_nonzero(region | template)
            best = max(best, overlap / union if union else 0.0)
    return best


def _read_label(image: Image.Image, point: tuple[int, int], texts: list[str]) -> str:
    """Which of `texts` is written beside the marker at `point` (labels sit left or right)."""
    white = _mask(image, WHITE)
    x, y = point
    half = 2 + max(_template(t).shape[1] for t in texts) + correspondence.RING_RADIUS + 3
    window = white[max(0, y - 9) : y + 10, max(0, x - half) : x + half + 1]
    scores = {text: _best_iou(window, _template(text)) for text in texts}
    return max(scores, key=scores.__getitem__)


def test_letters_are_written_beside_their_markers(samples: list) -> None:
    for ref, target in _pairs(samples[:12]):
        assert _read_label(ref.image, _point(ref.labels, "ref"), ["REF", "A", "B"]) == "REF"
        for letter in LETTERS:
            point = _point(target.labels, letter.lower())
            assert _read_label(target.image, point, list(LETTERS)) == letter, target.name


def _affine(labels: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b, c, d, e, f = (float(v) for v in labels["affine"].split(","))
    return np.array([[a, b], [d, e]]), np.array([c, f])


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear samples of every channel at pixel-index coordinates (xs, ys)."""
    return np.stack(
        [ndimage.map_coordinates(image[..., c], [ys, xs], order=1) for c in range(3)], axis=-1
    )


def _patches(
    labels: dict[str, str], reference: np.ndarray, target: np.ndarray, radius: int = 7
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The reference patch around REF and, per candidate, the target patch around it.

    Target patches are sampled along the labelled linear map (scale, rotation), so that with the
    right candidate the two patches show the same texture pixel for pixel.
    """
    matrix, _ = _affine(labels)
    offsets = np.mgrid[-radius : radius + 1, -radius : radius + 1].reshape(2, -1)[::-1]
    rx, ry = _point(labels, "ref")
    ref_patch = _sample(reference, rx + offsets[0], ry + offsets[1])
    mapped = matrix @ offsets
    candidates = {}
    for letter in LETTERS:
        cx, cy = _point(labels, letter.lower())
        candidates[letter] = _sample(target, cx + mapped[0], cy + mapped[1])
    return ref_patch, candidates


def _ncc(first: np.ndarray, second: np.ndarray) -> float:
    """Normalised cross-correlation per channel, averaged: blind to gain, offset, and tint."""
    a = (first - first.mean(0)) / (first.std(0) + 1e-6)
    b = (second - second.mean(0)) / (second.std(0) + 1e-6)
    return float((a * b).mean())


def test_correct_candidate_matches_the_ref_texture(unmarked: list) -> None:
    for labels, reference, target in unmarked:
        ref_patch, candidates = _patches(labels, reference, target)
        scores = {letter: _ncc(ref_patch, patch) for letter, patch in candidates.items()}
        errors = {letter: np.abs(ref_patch - patch).mean() for letter, patch in candidates.items()}
        answer = labels["answer"]
        wrong = [scores[letter] for letter in LETTERS if letter != answer]
        assert max(scores, key=scores.__getitem__) == answer, (labels["item"], scores)
        assert scores[answer] > 0.7 and scores[answer] - max(wrong) > 0.25, (labels, scores)
        if labels["transform"] != "lighting":
            worst = min(errors[letter] for letter in LETTERS if letter != answer)
            assert errors[answer] < 0.5 * worst, (labels["item"], errors)


def _tile_ncc(first: np.ndarray, second: np.ndarray, tile: int = 16) -> float:
    """Median NCC over tiles: local structure agrees even under a light gradient."""
    size = first.shape[0] // tile * tile
    scores = [
        _ncc(
            first[y : y + tile, x : x + tile].reshape(-1, 3),
            second[y : y + tile, x : x + tile].reshape(-1, 3),
        )
        for y in range(0, size, tile)
        for x in range(0, size, tile)
    ]
    return float(np.median(scores))


def test_target_is_the_whole_scene_under_the_labelled_transform(unmarked: list) -> None:
    """Every reference pixel reappears where the labelled affine sends it (not just REF)."""
    for labels, reference, target in unmarked:
        matrix, offset = _affine(labels)
        size = reference.shape[0]
        ys, xs = np.mgrid[0:size, 0:size].reshape(2, -1)
        qx, qy = matrix @ np.stack([xs, ys]) + offset[:, None]
        inside = (qx >= 1) & (qx <= size - 2) & (qy >= 1) & (qy <= size - 2)
        assert inside.mean() > 0.3
        moved = _sample(target, qx[inside], qy[inside])
        original = reference[ys[inside], xs[inside]]
        if labels["transform"] == "lighting":
            assert np.abs(moved - original).mean() > 12  # the light really changed
            assert _tile_ncc(reference, target) > 0.9  # but the geometry did not
            continue
        error = np.abs(moved - original).mean()
        # A control: the same comparison two pixels off is far worse.
        off = _sample(target, qx[inside] + 2, qy[inside])
        assert error < 8 and error < 0.4 * np.abs(off - original).mean(), (labels["item"], error)
        if labels["transform"] == "shift":
            dx, dy = (round(v) for v in offset)
            assert np.array_equal(matrix, np.eye(2)) and max(abs(dx), abs(dy)) > 0
            assert np.array_equal(moved, original)  # whole-pixel shifts are exact crops


def test_geometry_labels_are_consistent(samples: list, params) -> None:
    for sample in samples:
        labels = sample.labels
        matrix, offset = _affine(labels)
        scale, angle = float(labels["scale"]), np.radians(float(labels["angle"]))
        expected = scale * np.array(
            [[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]
        )
        assert np.allclose(matrix, expected, atol=1e-4)
        kind = labels["transform"]
        assert (scale != 1.0) == (kind == "scale") and (angle != 0.0) == (kind == "rotation")
        answer = _point(labels, labels["answer"].lower())
        exact = np.array([float(labels["exact_x"]), float(labels["exact_y"])])
        assert np.allclose(exact, matrix @ np.array(_point(labels, "ref")) + offset, atol=0.01)
        assert np.abs(exact - np.array(answer)).max() <= 0.5
        if kind == "lighting":
            assert answer == _point(labels, "ref")
        others = [_point(labels, c) for c in "abcd" if c != labels["answer"].lower()]
        for other in others:
            assert np.hypot(other[0] - answer[0], other[1] - answer[1]) >= params.min_distance
