"""Selecting hook points by name and glob; a miss lists the closest names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lens_assets.modules import ModuleSelectionError, list_modules, select_modules
from resources.runtime import LoadedModel

NAMES = [
    "model",
    "model.layers",
    "model.layers.0",
    "model.layers.0.mlp",
    "model.layers.1",
    "model.layers.1.mlp",
    "model.norm",
]


def test_star_matches_one_segment() -> None:
    assert select_modules(NAMES, ["model.layers.*"]) == ["model.layers.0", "model.layers.1"]


def test_double_star_matches_across_segments() -> None:
    assert select_modules(NAMES, ["model.**.mlp"]) == ["model.layers.0.mlp", "model.layers.1.mlp"]


def test_plain_name_matches_exactly_and_order_follows_the_model() -> None:
    assert select_modules(NAMES, ["model.norm", "model.layers.0"]) == [
        "model.layers.0",
        "model.norm",
    ]


def test_a_pattern_matching_nothing_lists_the_closest_names() -> None:
    with pytest.raises(ModuleSelectionError, match=r"'model.layer.0'.*model.layers.0"):
        select_modules(NAMES, ["model.layer.0"])


def test_list_modules_marks_the_selected_with_their_class(
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    model = load_tiny("llava").model
    infos = list_modules(model, ["model.language_model.layers.*"])
    selected = [i for i in infos if i.selected]
    assert [i.name for i in selected] == [
        "model.language_model.layers.0",
        "model.language_model.layers.1",
    ]
    assert {i.class_name for i in selected} == {"LlamaDecoderLayer"}
    assert len(infos) == len([n for n, _ in model.named_modules() if n])
