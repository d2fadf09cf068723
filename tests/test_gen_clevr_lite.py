"""clevr_lite: labels and answers checked against the rendered pixels and the scenes' objects.

Objects are found in the pixels alone: whatever differs from the empty floor by more than a soft
shadow can, with holes filled (a gray metal highlight passes through floor-like greys on its way
to white), split into 4-connected blobs.
"""

from __future__ import annotations

import io
import random
import re
from collections import Counter

import numpy as np
import pytest

from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.data.generators import Sample, clevr_lite, clevr_scene
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


ASKED = {"color": "colour", "shape": "shape", "material": "material", "size": "size"}


def check_answer(question, objects: list) -> None:
    """The question's answer, worked out again from the scene's objects by parsing its text."""
    text, answer = question.question, question.answer
    if match := re.fullmatch(r"Is there an? (.+)\?", text):
        assert question.kind == "exists" and question.concept is None
        present = any(obj.matches(query(match[1])) for obj in objects)
        assert answer == ("yes" if present else "no"), text
    elif text == "How many objects are there?":
        assert question.kind == question.concept == "count"
        assert answer == str(len(objects)), text
    elif match := re.fullmatch(r"What (color|shape|material|size) is the (.+)\?", text):
        key = ASKED[match[1]]
        assert question.kind == question.concept == key
        referents = [obj for obj in objects if obj.matches(query(match[2]))]
        assert len(referents) == 1, text  # the description singles out one object
        assert key not in query(match[2]), text  # and does not give the answer away
        assert answer == getattr(referents[0], key), text
    else:
        pytest.fail(f"unexpected question {text!r}")


def test_one_question_of_each_kind_per_scene_answered_from_the_objects():
    answers = Counter()
    for scene in clevr_lite.scenes(clevr_lite.Params(max_objects=5), 200, seed=2):
        assert tuple(q.kind for q in scene.questions) == clevr_lite.KINDS
        assert clevr_lite.KINDS == ("colour", "shape", "material", "size", "count", "exists")
        for question in scene.questions:
            assert question.answer == question.answer.lower()
            assert question.images is None
            assert question.choices == clevr_lite.CHOICES[question.kind]
            assert question.answer in question.choices
            check_answer(question, scene.objects)
        if len(scene.objects) == 1:  # alone, an object needs no description
            assert scene.questions[0].question == "What color is the object?"
        answers[scene.questions[-1].answer] += 1
    assert abs(answers["yes"] - answers["no"]) <= 1, answers


def test_question_answers_agree_with_the_scene_labels(mixed):
    for sample in mixed:
        by_kind = {q.kind: q for q in sample.questions}
        assert len(by_kind) == len(sample.questions) == 6
        assert by_kind["count"].answer == sample.labels["count"]
        if sample.labels["count"] == "1":
            for key in ("colour", "shape", "material", "size"):
                assert by_kind[key].answer == sample.labels[key]
        else:
            assert sample.labels[f"has_{by_kind['colour'].answer}"] == "yes"
            assert sample.labels[f"has_{by_kind['shape'].answer}"] == "yes"


def test_choices_are_clevrs_vocabularies():
    choices = clevr_lite.CHOICES
    assert choices["colour"] == tuple(clevr_lite.COLOURS) and len(choices["colour"]) == 8
    assert choices["shape"] == ("cube", "sphere", "cylinder")
    assert choices["material"] == ("rubber", "metal")
    assert choices["size"] == ("small", "large")
    assert choices["count"] == tuple(str(n) for n in range(11))
    assert choices["exists"] == ("yes", "no")


def test_an_attribute_no_description_can_ask_is_ruled_out():
    obj = clevr_scene.SceneObject
    twins = [obj("red", "cube", "rubber", "small"), obj("blue", "cube", "rubber", "small")]
    # Without its colour, each twin is "the small rubber cube", which is either of them.
    assert not clevr_scene.askable(twins)
    with pytest.raises(ValueError, match="colour"):
        clevr_scene.write_questions(twins, random.Random(0), Counter())
    # A third object can be asked: its colour is then asked of it, and only of it.
    third = obj("green", "sphere", "metal", "large")
    assert clevr_scene.askable([*twins, third])
    for seed in range(20):
        questions = clevr_scene.write_questions([*twins, third], random.Random(seed), Counter())
        assert questions[0].kind == "colour" and questions[0].answer == "green"
        check_answer(questions[0], [*twins, third])


def test_collected_rows_are_one_per_question_each_with_the_scene_image(tmp_path):
    config = parse_dataset_config({"kind": "clevr_lite", "size": 4, "max_objects": 4}, "t")
    out = collect_images("clevr", config, tmp_path)
    assert len(out.rows) == 4 and len(out.items) == 4 * 6
    for image, rows in zip(out.rows, zip(*[iter(out.items)] * 6, strict=True), strict=True):
        assert [row.image_ids for row in rows] == [(image["image_id"],)] * 6
        assert tuple(row.kind for row in rows) == clevr_lite.KINDS
        assert all(row.answer in row.choices for row in rows)
        assert all(row.labels["count"] == rows[4].answer for row in rows)


def test_crowded_scenes_still_fit():
    params = clevr_lite.Params(min_objects=10, max_objects=10)
    for scene in clevr_lite.scenes(params, 4, seed=0):
        assert len(scene.objects) == 10


def test_params_are_checked():
    with pytest.raises(ValueError):
        clevr_lite.Params(min_objects=4, max_objects=3)
    with pytest.raises(ValueError):
        clevr_lite.Params(colours=["red"])
