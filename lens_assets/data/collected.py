"""What collecting one dataset gives: its images (each stored once, by content), its rows, and
the files it could not use. The legacy image-keyed tables (`image_labels`, `prompts`) are
derived from the rows, so older queries keep answering."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lens_assets.config import ConfigError
from lens_assets.data.images import (
    ImageReadError,
    content_id,
    decode,
    duplicate_of,
    read_image_file,
)
from lens_assets.data.rows import (
    CONCEPT,
    CONTROL_TYPE,
    MAX_IMAGES_PER_ROW,
    OTHER,
    DatasetRow,
    clean_labels,
)


@dataclass
class DatasetImages:
    """Rows for `images`, `dataset_rows`, `row_labels` and `image_errors`.

    An image is its bytes: the same bytes met again are one image, one `images` row. From
    another file (a copy) they are also an error row naming the first file, so the copy is
    seen, not lost. A row met again (same images, same prompt) adds only labels not known for
    it yet."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # `images`
    items: list[DatasetRow] = field(default_factory=list)  # `dataset_rows`, in order
    errors: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # label -> declared role (`declare`)
    _first: dict[str, tuple[str, str]] = field(default_factory=dict, init=False, repr=False)
    _by_key: dict[str, DatasetRow] = field(default_factory=dict, init=False, repr=False)

    def add_image(
        self, data: bytes, path: Path | str, split: str | None = None, source: str | None = None
    ) -> str | None:
        """Record one image from its bytes and return its id; an unusable one becomes an
        error row (None). `source` is the file it came from when `path` is a copy written for
        it (a Hugging Face row)."""
        image_id = content_id(data)
        origin = source or str(path)
        if image_id not in self._first:
            try:
                image = decode(data, origin)
            except ImageReadError as error:
                self.error(origin, str(error))
                return None
            self._first[image_id] = (origin, str(path))
            self.rows.append(
                {"image_id": image_id, "dataset": self.name, "path": str(path),
                 "width": image.width, "height": image.height, "split": split}
            )  # fmt: skip
        elif (first := self._first[image_id][0]) != origin:
            self.error(origin, duplicate_of(first, image_id))
        return image_id

    def add_row(
        self,
        image_ids: Sequence[str],
        prompt: str | None = None,
        labels: Mapping[str, Any] | None = None,
        answer: Any = None,
        choices: Sequence[str] | None = None,
        split: str | None = None,
        kind: str | None = None,
        concept: str | None = None,
    ) -> DatasetRow:
        if len(image_ids) > MAX_IMAGES_PER_ROW:
            raise ValueError(
                f"dataset {self.name}: a row has {len(image_ids)} images; at most "
                f"{MAX_IMAGES_PER_ROW} are supported"
            )
        row = DatasetRow(
            self.name, tuple(image_ids), prompt or None,
            None if answer is None or answer != answer else str(answer),
            None if not choices else tuple(str(c) for c in choices),
            split, kind, concept, clean_labels(labels),
        )  # fmt: skip
        known = self._by_key.get(row.row_key)
        if known is None:
            self._by_key[row.row_key] = row
            self.items.append(row)
            return row
        for concept_name, value in row.labels.items():
            known.labels.setdefault(concept_name, value)
        return known

    def declare(
        self,
        concepts: Sequence[str] | None,
        control_type: str | None = None,
        strict: bool = True,
    ) -> None:
        """Record which labels are concepts to probe (the others become `other`) and which one
        names each row's input for the control task. A declared name no row carries is an
        error (a typo), except a concept when not `strict`: a generator's own list may name a
        label this draw did not produce (clevr_lite's one-object `colour`)."""
        known = sorted({concept for row in self.items for concept in row.labels})
        wanted = [*((concepts or ()) if strict else ()), *([control_type] if control_type else [])]
        if missing := [name for name in wanted if name not in known]:
            raise ConfigError(
                f"dataset {self.name}: the config declares {missing} (concepts / control_type) "
                f"but no row has such a label; its labels are {known or '(none)'}: fix the "
                "name or leave it out"
            )
        roles: dict[str, str] = {}
        if concepts is not None:
            roles = {label: CONCEPT if label in concepts else OTHER for label in known}
        if control_type in known:
            roles[control_type] = CONTROL_TYPE
        self.roles = roles

    def path_of(self, image_id: str) -> str | None:
        """Where the image with this id is stored, once it has been added."""
        first = self._first.get(image_id)
        return first[1] if first else None

    def error(self, path: Path | str, message: str) -> None:
        self.errors.append({"dataset": self.name, "path": str(path), "error": message})

    # -- the tables ------------------------------------------------------------------------
    @property
    def row_records(self) -> list[dict[str, Any]]:
        return [row.record(position) for position, row in enumerate(self.items)]

    @property
    def row_label_records(self) -> list[dict[str, Any]]:
        return [label for row in self.items for label in row.label_records(self.roles)]

    @property
    def labels(self) -> list[dict[str, Any]]:
        """`image_labels`: the labels of the one-image rows, each (image, concept) once."""
        seen: set[tuple[str, str]] = set()
        out = []
        for row in self.items:
            if len(row.image_ids) != 1:
                continue
            for concept, value in row.labels.items():
                if (row.image_ids[0], concept) not in seen:
                    seen.add((row.image_ids[0], concept))
                    out.append({"image_id": row.image_ids[0], "dataset": self.name,
                                "concept": concept, "value": value})  # fmt: skip
        return out

    @property
    def prompts(self) -> list[dict[str, Any]]:
        """`prompts`: every row with a question of its own, under its first image."""
        return [
            {"image_id": row.image_ids[0], "dataset": self.name, "prompt_id": position,
             "prompt": row.prompt, "answer": row.answer, "kind": row.kind,
             "concept": row.concept}
            for position, row in enumerate(self.items)
            if row.prompt and row.image_ids
        ]  # fmt: skip


def read_or_record(path: Path, out: DatasetImages) -> bytes | None:
    """The file's bytes, or None with the reason recorded (only a regular file under the size
    cap is read: a named pipe among the images must not hang the run)."""
    try:
        return read_image_file(path)
    except ImageReadError as error:
        out.error(path, str(error))
        return None
