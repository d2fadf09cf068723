"""Which questions and which clean / corrupted pairs the interpretability analyses run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from lens_assets.analyses.interpretability import (
    clean_corrupted_pairs,
    load_settings,
    pick_questions,
)
from lens_assets.config import ConfigError

LABELS = {
    "a": {"word": "red", "font": "blue", "background": "white"},
    "b": {"word": "red", "font": "blue", "background": "black"},
    "c": {"word": "red", "font": "green", "background": "white"},
    "d": {"word": "red", "font": "blue", "background": "white"},
    "e": {"word": "blue", "font": "red"},  # no background label: never paired
}


def test_pairs_share_the_same_labels_and_differ_in_one() -> None:
    pairs = clean_corrupted_pairs(LABELS, ["word", "font"], "background", limit=10)
    assert pairs == [("a", "b")]
    for clean, corrupted in pairs:
        assert LABELS[clean]["font"] == LABELS[corrupted]["font"]
        assert LABELS[clean]["background"] != LABELS[corrupted]["background"]


def test_no_pair_without_a_differing_partner() -> None:
    assert clean_corrupted_pairs(LABELS, ["word", "font", "background"], "word", 10) == []


def test_questions_are_one_per_image_and_capped_per_dataset() -> None:
    questions = [
        {"dataset": "s", "image_id": image, "concept": concept, "prompt": f"{image}-{concept}"}
        for image in "abc"
        for concept in ("font", "background")
    ]
    picked = pick_questions(questions, "font", per_dataset=2)
    assert [q["prompt"] for q in picked] == ["a-font", "b-font"]


def test_a_misspelt_setting_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "interpretability.yaml"
    path.write_text("patching:\n  max_pair: 3\n")
    with pytest.raises(ConfigError, match=r"patching\.max_pair: Extra inputs"):
        load_settings(path)


def test_no_file_means_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "missing.yaml")
    assert settings.datasets == ["stroop"] and settings.ablation.mode == "zero"
