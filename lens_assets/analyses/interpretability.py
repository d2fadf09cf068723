"""What the attention, logit-lens, attribution and intervention analyses run on, and with
which settings (`configs/interpretability.yaml`): a few questions per dataset, and clean /
corrupted pairs of images that differ in one labelled factor only."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lens_assets.config import ConfigError, read_yaml


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttentionSettings(_Settings):
    layers: list[str] = Field(
        default_factory=lambda: ["**language_model.layers.*"],
        description="Globs over module names: the decoder layers whose attention is kept.",
    )


class LogitLensSettings(_Settings):
    top_k: int = Field(default=5, ge=1)


class AttributionSettings(_Settings):
    layer: str | None = Field(
        default=None,
        description="Grad-CAM's vision-tower layer (a glob); default: the block the LLM reads.",
    )


class PatchingSettings(_Settings):
    dataset: str = "stroop"
    same: list[str] = Field(default_factory=lambda: ["word"])
    differ: str = "background"
    concept: str = Field(
        default="background", description="The question asked: its answer is the logit read."
    )
    layers: list[str] = Field(default_factory=lambda: ["**language_model.layers.*"])
    positions: list[Literal["all", "image"]] = Field(default_factory=lambda: ["all", "image"])
    max_pairs: int = Field(default=4, ge=1)


class AblationSettings(_Settings):
    mode: Literal["zero", "mean"] = "zero"
    heads: dict[str, list[int]] = Field(
        default_factory=lambda: {"**language_model.layers.0": [0]},
        description="Layer glob -> head indices to ablate together.",
    )


class InterpretabilitySettings(_Settings):
    datasets: list[str] = Field(default_factory=lambda: ["stroop"])
    concept: str | None = Field(default="font", description="Only questions about this concept.")
    max_items: int = Field(default=4, ge=1, description="Questions per dataset (cost control).")
    attention: AttentionSettings = Field(default_factory=AttentionSettings)
    logit_lens: LogitLensSettings = Field(default_factory=LogitLensSettings)
    attribution: AttributionSettings = Field(default_factory=AttributionSettings)
    patching: PatchingSettings = Field(default_factory=PatchingSettings)
    ablation: AblationSettings = Field(default_factory=AblationSettings)


def load_settings(path: Path) -> InterpretabilitySettings:
    data = (read_yaml(path, "interpretability config") if path.is_file() else None) or {}
    try:
        return InterpretabilitySettings.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigError(f"invalid interpretability config {path}: {problems}") from None


def pick_questions(
    questions: Sequence[dict[str, Any]], concept: str | None, per_dataset: int
) -> list[dict[str, Any]]:
    """The first `per_dataset` questions (by image) of each dataset about `concept`, one per
    image, so the analyses see several images rather than one image asked many times."""
    taken: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for question in questions:
        key = (question["dataset"], question["image_id"])
        if concept is not None and question.get("concept") != concept:
            continue
        if key in seen or len(taken[question["dataset"]]) >= per_dataset:
            continue
        seen.add(key)
        taken[question["dataset"]].append(question)
    return [q for dataset in sorted(taken) for q in taken[dataset]]


def clean_corrupted_pairs(
    labels: dict[str, dict[str, str]], same: Sequence[str], differ: str, limit: int
) -> list[tuple[str, str]]:
    """(clean, corrupted) image ids that agree on every `same` label and differ on `differ`:
    the same Stroop word in the same ink on another background. Each clean image is used once;
    the order is by image id, so runs are reproducible."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for image_id in sorted(labels):
        values = labels[image_id]
        if all(name in values for name in (*same, differ)):
            groups[tuple(values[name] for name in same)].append(image_id)
    pairs = []
    for members in groups.values():
        for clean in members:
            other = next((m for m in members if labels[m][differ] != labels[clean][differ]), None)
            if other is not None:
                pairs.append((clean, other))
                break
    return sorted(pairs)[:limit]
