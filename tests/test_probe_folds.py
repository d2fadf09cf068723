"""Probe folds are grouped by picture: rows that share an image (a scene asked six questions,
two pairs with a common picture) never sit in both train and test."""

from __future__ import annotations

import numpy as np
import pytest

from lens_assets.analyses.probe_maths import ProbeSettings, probe_in_context
from lens_assets.analyses.probing import concept_task, picture_groups


def test_rows_sharing_a_picture_are_one_group() -> None:
    groups = picture_groups([("a",), ("a",), ("b",), ("a", "c"), ("c",), ()])
    assert groups[0] == groups[1] == groups[3] == groups[4]
    assert len({groups[0], groups[2], groups[5]}) == 3  # b alone; a text-only row alone


def memorisable(pictures: int = 40, questions: int = 3) -> tuple[np.ndarray, np.ndarray, list]:
    """Each picture's rows share one random vector and one random label: only a probe that
    has seen the picture in training can do better than chance."""
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(pictures, 64)), questions, axis=0)
    X += rng.normal(scale=1e-3, size=X.shape)
    y = np.repeat(rng.integers(0, 2, size=pictures), questions).astype(str)
    images = [(f"img-{i // questions}",) for i in range(pictures * questions)]
    return X, y, images


def test_grouped_folds_leave_no_picture_to_memorise() -> None:
    X, y, images = memorisable()
    settings = ProbeSettings(permutations=0, folds=5)
    types = [str(i) for i in range(len(y))]
    leaky = probe_in_context(X, y, types, "linear", settings)
    grouped = probe_in_context(X, y, types, "linear", settings, groups=picture_groups(images))
    assert leaky.accuracy > 0.95  # a sibling row in training gives the answer away
    assert grouped.accuracy < 0.75  # nothing carries over between pictures: about chance


def test_a_concept_task_carries_each_rows_group_and_input_through_its_filters() -> None:
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    keys = [f"r{i}" for i in range(6)]
    labels = {"colour": {"r0": "red", "r1": "red", "r2": "blue", "r3": "blue", "r5": "blue"}}
    groups = np.array([7, 7, 8, 8, 9, 9])
    types = ["img-a", "img-a", "img-b", "img-c", "img-d", "img-e"]
    task = concept_task(X, keys, labels, "colour", ProbeSettings(), groups, types)
    assert task is not None
    vectors, y, kept_types, kept_groups = task
    assert vectors.tolist() == X[[0, 1, 2, 3, 5]].tolist()
    assert y.tolist() == ["red", "red", "blue", "blue", "blue"]  # r4 has no label
    assert kept_groups.tolist() == [7, 7, 8, 8, 9]
    assert kept_types == ["img-a", "img-a", "img-b", "img-c", "img-e"]  # inputs, not labels
    untyped = concept_task(X, keys, labels, "colour", ProbeSettings(), groups)
    assert untyped is not None and untyped[2] == ["r0", "r1", "r2", "r3", "r5"]  # each its own


def test_the_folds_of_one_labelling_are_split_once_for_every_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every layer of a dataset probes a concept on the same rows: the same labels and groups
    are split once, and the remembered folds are the ones a fresh split gives."""
    from sklearn.model_selection import StratifiedGroupKFold

    from lens_assets.analyses import probe_maths

    _, y, images = memorisable()
    codes = np.unique(y, return_inverse=True)[1]
    groups = picture_groups(images)
    settings = ProbeSettings(seed=11)
    fresh = probe_maths._folds(codes, settings, groups)
    calls = []
    real_split = StratifiedGroupKFold.split
    monkeypatch.setattr(StratifiedGroupKFold, "split",
                        lambda *a, **k: calls.append(1) or real_split(*a, **k))  # fmt: skip
    layers = [probe_maths._splits(codes.copy(), settings, groups.copy()) for _ in range(3)]
    assert len(calls) == 1
    for folds in layers:
        assert [(list(tr), list(te)) for tr, te in folds] == [
            (list(tr), list(te)) for tr, te in fresh
        ]
        assert not folds[0][0].flags.writeable  # shared between threads: nobody writes them
    other = probe_maths._splits(codes, ProbeSettings(seed=12), groups)  # another seed
    assert len(calls) == 2 and other is not layers[0]
