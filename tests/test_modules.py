"""Selecting hook points by name and glob; a miss lists the closest names."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import ModuleSelectionError, list_modules, matches, select_modules

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


# -- globs without catastrophic backtracking (issue 16) ---------------------------------------


def reference_regex(pattern: str) -> re.Pattern[str]:
    """The glob semantics as the backtracking regex LensFlow used to compile: `**` is `.*`,
    `*` is `[^.]*`, `?` is `[^.]`, anything else is itself; matched in full."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] in "*?":
            parts.append("[^.]*" if pattern[i] == "*" else "[^.]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


GLOB_CHARS = st.text(alphabet="ab.*?", max_size=12)
NAME_CHARS = st.text(alphabet="ab.*?", max_size=14)


@settings(max_examples=2000, deadline=None)
@given(GLOB_CHARS, NAME_CHARS)
def test_a_glob_matches_exactly_what_the_regex_semantics_match(pattern: str, name: str) -> None:
    assert matches(pattern, name) == (reference_regex(pattern).fullmatch(name) is not None)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["model", "layers", "0", "12", "mlp", "q_proj"]), max_size=6))
def test_a_glob_built_from_a_module_name_matches_it(parts: list[str]) -> None:
    name = ".".join(parts)
    for pattern in (name, ".".join("*" for _ in parts), "**", f"**{name[-3:]}"):
        assert matches(pattern, name) == (reference_regex(pattern).fullmatch(name) is not None)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("model.*", "model.layers", True),
        ("model.*", "model.layers.0", False),  # `*` stays within one segment
        ("model.***", "model.layers.0", True),  # a run of three stars is `**`
        ("model.layers.?", "model.layers.7", True),
        ("model.layers.?", "model.layers.12", False),
        ("model?layers", "model.layers", False),  # `?` is never a dot
        ("model.[0]", "model.[0]", True),  # regex characters are literal
        ("", "", True),
    ],
)
def test_glob_semantics_by_example(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


def test_a_hostile_glob_over_a_long_name_returns() -> None:
    """`********************Z` compiled to `.*` ten times backtracks for hours over 300
    characters; the subprocess's generous timeout only stops a hang from stalling the suite
    (the regex holds the GIL, so a thread could not be abandoned)."""
    name = ".".join(["layer"] * 50)  # 299 characters, no Z
    script = (
        "from lens_assets.capture.modules import matches; "
        f"print(matches({'*' * 20 + 'Z'!r}, {name!r}), matches({'*a' * 15 + 'Z'!r}, {name!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def test_model_order_puts_the_vision_tower_before_the_projector_before_the_language_model() -> None:
    from lens_assets.capture.modules import model_order

    names = [
        "model.language_model.layers.10", "model.language_model.layers.2",
        "model.language_model.norm", "model.multi_modal_projector",
        "model.vision_tower.encoder.layers.1", "model.vision_tower.encoder.layers.0",
        "model.visual.merger", "model.visual.blocks.3",
    ]  # fmt: skip
    assert sorted(names, key=model_order) == [
        "model.vision_tower.encoder.layers.0", "model.vision_tower.encoder.layers.1",
        "model.visual.blocks.3", "model.multi_modal_projector", "model.visual.merger",
        "model.language_model.layers.2", "model.language_model.layers.10",
        "model.language_model.norm",
    ]  # fmt: skip
