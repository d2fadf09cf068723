"""Training rows: images, the question asked, the answer to learn.

The row source is a parameter of training: a notebook or this module's `load_rows` collects a
dataset config straight from its generator or files (no warehouse needed); the orchestration
layer may read the same rows from the warehouse and pass them in instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lens_assets.config import configs_dir
from lens_assets.data.datasets import (
    DatasetConfig,
    collect_images,
    load_dataset_config,
    parse_dataset_config,
)
from lens_assets.tuning.config import RowsSpec, TuningConfigError

__all__ = ["TrainingRow", "dataset_config", "load_rows", "without_overlap"]


@dataclass(frozen=True)
class TrainingRow:
    """One question with its answer: the row's images in order, its prompt, the answer text,
    what scoring needs (kind, choices), what keeps held-out rows apart (image_ids), and where
    the warehouse holds the same row (dataset: the config's name, or "inline"; row_key)."""

    images: tuple[Image.Image, ...]
    prompt: str
    answer: str
    kind: str | None = None
    choices: tuple[str, ...] | None = None
    image_ids: tuple[str, ...] = ()
    dataset: str | None = None
    row_key: str | None = None


def dataset_config(spec: RowsSpec, configs: Path | None = None) -> tuple[str, DatasetConfig]:
    """The dataset's name and config: a file under configs/datasets/, or the inline mapping."""
    if isinstance(spec.dataset, dict):
        return "inline", parse_dataset_config(spec.dataset, "(inline dataset in tuning config)")
    root = (configs or configs_dir()) / "datasets"
    path = root / f"{spec.dataset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []
        raise TuningConfigError(
            f"dataset: {spec.dataset!r} is not a dataset config under {root} (known: "
            f"{', '.join(known) or 'none'}); name one, or write the dataset inline as a mapping "
            "with `kind`"
        )
    return spec.dataset, load_dataset_config(path)


def load_rows(
    spec: RowsSpec,
    default_prompt: str = "",
    configs: Path | None = None,
    rendered: str | Path | None = None,
) -> list[TrainingRow]:
    """The rows `spec` selects, with their images loaded: only rows with an answer, of the
    split and kinds asked for, at most `limit`. `rendered` is where generated images are
    written (a temporary folder by default); a row without a prompt is asked `default_prompt`.
    """
    name, config = dataset_config(spec, configs)
    if rendered is None:
        with tempfile.TemporaryDirectory(prefix="lens-tuning-") as folder:
            return _collect(spec, name, config, default_prompt, folder)
    return _collect(spec, name, config, default_prompt, rendered)


def _collect(
    spec: RowsSpec, name: str, config: DatasetConfig, default_prompt: str, rendered: str | Path
) -> list[TrainingRow]:
    collected = collect_images(name, config, rendered)
    items = [row for row in collected.items if row.answer is not None]
    if not items:
        raise TuningConfigError(
            f"dataset {name!r} has no rows with an answer, and training needs the answer to "
            "learn; use a dataset whose rows carry answers (clevr_lite, correspondence, ...)"
        )
    splits = sorted({str(row.split) for row in items})
    if spec.split is not None:
        items = [row for row in items if row.split == spec.split]
        if not items:
            raise TuningConfigError(
                f"dataset {name!r} has no answered rows in split {spec.split!r}; its splits: "
                f"{', '.join(splits)}"
            )
    if spec.kinds is not None:
        present = sorted({str(row.kind) for row in items})
        if missing := [kind for kind in spec.kinds if kind not in present]:
            raise TuningConfigError(
                f"kinds: {missing} are not question kinds of dataset {name!r} (split "
                f"{spec.split}); its kinds: {', '.join(present)}"
            )
        items = [row for row in items if row.kind in spec.kinds]
    if spec.limit is not None:
        items = items[: spec.limit]
    cache: dict[str, Image.Image] = {}
    rows = []
    for item in items:
        images = tuple(
            _image(collected.path_of(image_id), image_id, cache) for image_id in item.image_ids
        )
        rows.append(
            TrainingRow(
                images=images,
                prompt=item.prompt or default_prompt,
                answer=str(item.answer),
                kind=item.kind,
                choices=item.choices,
                image_ids=item.image_ids,
                dataset=name,
                row_key=item.row_key,
            )
        )
    return rows


def _image(path: str | None, image_id: str, cache: dict[str, Image.Image]) -> Image.Image:
    if image_id not in cache:
        if path is None:
            raise ValueError(f"image {image_id} has no file; the dataset could not store it")
        with Image.open(path) as image:
            cache[image_id] = image.convert("RGB")
    return cache[image_id]


def without_overlap(
    held_out: Sequence[TrainingRow], train: Sequence[TrainingRow]
) -> list[TrainingRow]:
    """Held-out rows showing no image the training rows show: a score on them is about images
    the model has not been trained on."""
    seen = {image_id for row in train for image_id in row.image_ids}
    return [row for row in held_out if not seen.intersection(row.image_ids)]
