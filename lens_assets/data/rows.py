"""The dataset row: the unit of data. A row is zero or more images in order, its own prompt (the
model config's `prompt` is only the default for rows that have none), its labels, its expected
answer and answer choices where it has them, and its split.

A row's key is a hash of its image ids and its own prompt, so the same row gets the same key in
every run and on every machine, and the same image under two questions is two rows. The SQL
migration that upgraded image-keyed warehouses computes the same hash (sql/017_rows.sql).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_IMAGES_PER_ROW = 16  # far beyond any benchmark (2-4); a guard against a runaway column
IMAGE_SEPARATOR = "\x1f"
PROMPT_SEPARATOR = "\x1e"

# What a dataset declares a label to be (`row_labels.role`); NULL where it declares nothing, and
# probing then judges the label by its values (`analyses.probing.probed_concepts`).
CONCEPT = "concept"  # a concept to probe
CONTROL_TYPE = "control_type"  # names each row's input for the probes' control task
OTHER = "other"  # a label that is not a concept: an id, a coordinate, an answer letter
ROLES = (CONCEPT, CONTROL_TYPE, OTHER)


def row_key(image_ids: Sequence[str], prompt: str | None) -> str:
    """The row's stable key (16 hex digits)."""
    text = IMAGE_SEPARATOR.join(image_ids) + PROMPT_SEPARATOR + (prompt or "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RowInput:
    """What extraction needs of a row: its key, its images' ids and files in order, and the
    prompt the model is asked (the row's own, else the config's default)."""

    row_key: str
    image_ids: tuple[str, ...]
    paths: tuple[str, ...]
    prompt: str | None = None

    def asked(self, default: str) -> str:
        return self.prompt if self.prompt else default


@dataclass
class DatasetRow:
    """One row of `dataset_rows` before it is written, with its labels."""

    dataset: str
    image_ids: tuple[str, ...]
    prompt: str | None = None
    answer: str | None = None
    choices: tuple[str, ...] | None = None
    split: str | None = None
    kind: str | None = None
    concept: str | None = None  # the label concept the answer is a value of, where there is one
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def row_key(self) -> str:
        return row_key(self.image_ids, self.prompt)

    def record(self, position: int) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "row_key": self.row_key,
            "position": position,
            "image_ids": list(self.image_ids),
            "prompt": self.prompt,
            "answer": self.answer,
            "choices": None if self.choices is None else list(self.choices),
            "split": self.split,
            "kind": self.kind,
            "concept": self.concept,
        }

    def label_records(self, roles: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """`row_labels` rows, each with its label's declared role (None: undeclared)."""
        roles = roles or {}
        return [
            {"dataset": self.dataset, "row_key": self.row_key, "concept": c, "value": v,
             "role": roles.get(c)}
            for c, v in self.labels.items()
        ]  # fmt: skip


def clean_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    """Labels as text, leaving out the empty ones (None, NaN, '')."""
    out = {}
    for concept, value in (labels or {}).items():
        if value is None or value != value or value == "":
            continue
        out[str(concept)] = str(value)
    return out


def choices_of(value: Any) -> tuple[str, ...] | None:
    """Answer choices from a list, or from text separated by `|` (a CSV cell)."""
    if value is None or value != value or value == "":
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split("|")]
    else:
        parts = [str(p) for p in value]
    return tuple(p for p in parts if p) or None
