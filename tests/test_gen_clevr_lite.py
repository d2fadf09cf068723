"""clevr_lite: labels and answers checked against the rendered pixels and the scenes' objects.

Objects are found in the pixels alone: whatever differs from the empty floor by more than a soft
shadow can, with holes filled (a gray metal highlight passes through floor-like greys on its way
to white), split into 4-connected blobs.
"""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest

from lens_assets.data.generators import Sample, clevr_lite
from lens_assets.data.generators import generate as generate_kind

SIZE = clevr_lite.Params().image_size
# Shadows darken the floor by at most 15% of 164 (25 levels); the darkest floor (138) is 46
# levels above the brightest unlit gray-object pixel (92).
FOREGROUND = 36
NEAR_WHITE = 215  # every channel above this: a highlight (the floor stays below 165)
WORDS = {value: key for key, values in clevr_lite.VALUES.items() for value in values}


@pytest.fixture(scope="module")
def floor() -> np.ndarray:
    return clevr_lite.empty_floor(SIZE).astype(np.int16)


@pytest.fixture(scope="module")
def singles() -> list[Sample]:
    return list(clevr_lite.generate(clevr_lite.Params(single_fraction=1.0), 64, seed=3))


@pytest.fixture(scope="module")
def mixed() -> list[Sample]:
    return list(clevr_lite.generate(clevr_lite.Params(max_objects=6), 48, seed=11))


def pixels(sample: Sample) -> np.ndarray:
    return np.asarray(sample.image).astype(np.int16)


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected labels (0 = outside the mask): every pixel points at the smallest index it
    has reached; taking neighbours' pointers and jumping pointers converges in a few rounds."""
    big = mask.size
    labels = np.where(mask, np.arange(big).reshape(mask.shape), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        shifted = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        hooked = np.where(mask, np.minimum.reduce([labels, *shifted]), big)
        flat = np.append(hooked.ravel(), big)
        for _ in range(4):
            flat = flat[flat]
        updated = flat[:-1].reshape(mask.shape)
        if np.array_equal(updated, labels):
            return np.where(mask, labels + 1, 0)
        labels = updated


def objects_mask(image: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Pixels unlike the floor, with enclosed holes filled."""
    mask = np.abs(image - floor).max(axis=2) > FOREGROUND
    background = components(~mask)
    outside = np.unique(
        np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    )
    return ~np.isin(background, outside[outside > 0])  # 0: the pixels that are in the mask


def blobs(image: np.ndarray, floor: np.ndarray) -> int:
    return len(np.unique(components(objects_mask(image, floor)))) - 1


def erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def seen_colour(image: np.ndarray, mask: np.ndarray) -> str:
    """The palette colour most of the object's pixels point towards in RGB space: shading scales
    a colour, so its direction survives; antialiased edges and highlights are left out."""
    core = erode(mask) & (image.min(axis=2) < NEAR_WHITE)
    rgb = image[core].astype(np.float64)
    names = list(clevr_lite.COLOURS)
    palette = np.array([clevr_lite.COLOURS[name] for name in names], dtype=np.float64)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    rgb /= np.linalg.norm(rgb, axis=1, keepdims=True) + 1e-9
    votes = Counter(np.argmax(rgb @ palette.T, axis=1).tolist())
    return names[votes.most_common(1)[0][0]]


def highlight_pixels(image: np.ndarray, mask: np.ndarray) -> int:
    return int((mask & (image.min(axis=2) > NEAR_WHITE)).sum())


def test_single_colour_label_is_the_nearest_palette_colour(singles, floor):
    for sample in singles:
        image = pixels(sample)
        assert seen_colour(image, objects_mask(image, floor)) == sample.labels["colour"], (
            sample.name
        )


def test_metal_shows_a_highlight_that_rubber_lacks(singles, floor):
    seen: dict[tuple[str, str], list[int]] = {}
    for sample in singles:
        image = pixels(sample)
        key = (sample.labels["colour"], sample.labels["material"])
        seen.setdefault(key, []).append(highlight_pixels(image, objects_mask(image, floor)))
    for colour in clevr_lite.COLOURS:
        metal, rubber = seen[(colour, "metal")], seen[(colour, "rubber")]
        assert min(metal) >= 4 and max(rubber) == 0, (colour, metal, rubber)


def test_large_objects_cover_more_pixels(singles, floor):
    areas: dict[str, list[int]] = {"small": [], "large": []}
    for sample in singles:
        areas[sample.labels["size"]].append(int(objects_mask(pixels(sample), floor).sum()))
    assert min(areas["large"]) > 1.5 * max(areas["small"]), areas


def test_count_is_the_number_of_blobs(singles, mixed, floor):
    counts = Counter()
    for sample in singles + mixed:
        assert blobs(pixels(sample), floor) == int(sample.labels["count"]), sample.name
        counts[sample.labels["count"]] += 1
    assert set(counts) == {"1", "2", "3", "4", "5", "6"}


def test_single_object_classes_are_balanced(singles):
    for key in ("colour", "shape", "material", "size"):
        counts = Counter(sample.labels[key] for sample in singles)
        assert set(counts) == set(clevr_lite.VALUES[key])
        assert max(counts.values()) - min(counts.values()) <= 1, (key, counts)


def test_splits_follow_the_object_count(mixed):
    splits = Counter(sample.split for sample in mixed)
    assert splits == {"single": 24, "multi": 24}
    for key in ("colour", "shape", "material", "size"):
        counts = Counter(s.labels[key] for s in mixed if s.split == "single")
        assert max(counts.values()) - min(counts.values()) <= 1, (key, counts)
    for sample in mixed:
        assert sample.split == ("single" if sample.labels["count"] == "1" else "multi")
        if sample.split == "single":
            assert {"colour", "shape", "material", "size"} <= set(sample.labels)
    assert all(isinstance(value, str) for s in mixed for value in s.labels.values())


def png(sample: Sample) -> bytes:
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_same_seed_same_bytes_other_seed_other_scenes():
    params = clevr_lite.Params()
    first = [png(s) for s in generate_kind("clevr_lite", params, 8, 5)]
    again = [png(s) for s in clevr_lite.generate(params, 8, 5)]
    other = [png(s) for s in clevr_lite.generate(params, 8, 6)]
    assert first == again
    assert all(a != b for a, b in zip(first, other, strict=True))
    assert [s.name for s in clevr_lite.generate(params, 3, 0)] == ["00000", "00001", "00002"]


def query(phrase: str, plural: bool = False) -> dict[str, str]:
    """Parse a noun phrase ("large red metal cube", "rubber objects") back into attributes."""
    words = phrase.split()
    noun = words.pop()
    noun = noun[:-1] if plural else noun
    result = {WORDS[word]: word for word in words}
    if noun != "object":
        result["shape"] = noun
    assert len(result) == len(words) + (noun != "object")
    return result


def test_answers_match_the_scene_objects():
    answers = Counter()
    for scene in clevr_lite.scenes(clevr_lite.Params(max_objects=5), 200, seed=2):
        objects = scene.objects
        kinds = Counter(q.kind for q in scene.questions)
        assert kinds["count"] == 2 and kinds["exists"] == 1
        for question in scene.questions:
            text, answer = question.question, question.answer
            assert answer == answer.lower()
            if match := re.fullmatch(r"Is there an? (.+)\?", text):
                present = any(obj.matches(query(match[1])) for obj in objects)
                assert answer == ("yes" if present else "no"), text
                answers[answer] += 1
            elif match := re.fullmatch(r"How many (.+) are there\?", text):
                wanted = query(match[1], plural=True)
                assert answer == str(sum(obj.matches(wanted) for obj in objects)), text
            elif match := re.fullmatch(r"What (color|shape|material|size) is the (.+)\?", text):
                referents = [obj for obj in objects if obj.matches(query(match[2]))]
                assert len(referents) == 1, text
                key = "colour" if match[1] == "color" else match[1]
                assert answer == getattr(referents[0], key), text
            else:
                pytest.fail(f"unexpected question {text!r}")
    assert abs(answers["yes"] - answers["no"]) <= 1, answers


def test_crowded_scenes_still_fit():
    params = clevr_lite.Params(min_objects=10, max_objects=10)
    for scene in clevr_lite.scenes(params, 4, seed=0):
        assert len(scene.objects) == 10


def test_params_are_checked():
    with pytest.raises(ValueError):
        clevr_lite.Params(min_objects=4, max_objects=3)
    with pytest.raises(ValueError):
        clevr_lite.Params(colours=["red"])
