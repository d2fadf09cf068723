"""How each dataset kind yields its rows (the configs are in `kinds`, the user's tables are read
in `tabular`); the names callers import about datasets are all here.

Every kind ends as the same dataset rows (lens_assets.data.rows): images, a prompt, labels, an
answer and choices where known, plus the files it could not use. Kinds: the synthetic
generators (`shapes`, `clevr_lite`, `stroop`, `correspondence`, `odd_one_out`, `art_style`),
`blank` (another dataset's questions asked about blank images), and the user's own data:
`folder` (VLM-Lens's input_dir, optional labels CSV), `manifest` (CSV, Parquet or JSONL, one or
several images per row) and `hf_disk` / `hf_hub` (Hugging Face datasets, several image columns
where a benchmark has them).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lens_assets.config import ConfigError
from lens_assets.data import files, generators
from lens_assets.data.collected import DatasetImages, read_or_record
from lens_assets.data.images import escapes_root, folder_images_within
from lens_assets.data.kinds import (
    DATASET_NAME,
    IMAGE_KEYS,
    KIND_MODELS,
    BlankDataset,
    DatasetConfig,
    FolderDataset,
    GeneratedDataset,
    HfDataset,
    ManifestDataset,
    checked_dataset_name,
    load_dataset_config,
    parse_dataset_config,
    vlm_lens_dataset,
)
from lens_assets.data.tabular import collect_hf, collect_manifest

__all__ = [
    "DATASET_NAME",
    "IMAGE_KEYS",
    "KIND_MODELS",
    "BlankDataset",
    "DatasetConfig",
    "DatasetImages",
    "FolderDataset",
    "GeneratedDataset",
    "HfDataset",
    "ManifestDataset",
    "checked_dataset_name",
    "collect_all",
    "collect_images",
    "load_dataset_config",
    "parse_dataset_config",
    "vlm_lens_dataset",
]


def _write_png(image: Image.Image, location: str) -> bytes:
    """Save deterministically; an unchanged file is not rewritten (its mtime stays)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    files.write_bytes(location, data)
    return data


def collect_generated(
    config: GeneratedDataset, out: DatasetImages, rendered: str | Path, _: Any
) -> None:
    params = generators.params_model(config.kind).model_validate(config.model_extra or {})
    for sample in generators.generate(config.kind, params, config.size, config.seed):
        pictures = sample.pictures()
        ids = []
        for index, picture in enumerate(pictures):
            stem = sample.name if len(pictures) == 1 else f"{sample.name}-{index}"
            path = files.join(rendered, out.name, f"{stem}.png")
            image_id = out.add_image(_write_png(picture, path), path, sample.split)
            if image_id is None:
                break
            ids.append(image_id)
        if len(ids) != len(pictures):
            continue  # a picture that cannot be used drops its sample (an error row says why)
        if not sample.questions:
            out.add_row(ids, labels=sample.labels, split=sample.split)
        for q in sample.questions:
            shown = ids if q.images is None else [ids[i] for i in q.images]
            out.add_row(
                shown,
                q.question,
                sample.labels,
                q.answer,
                q.choices,
                sample.split,
                q.kind,
                q.concept,
            )


def _label_table(path: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.csv as pv

    rows = pv.read_csv(path).to_pylist()
    if rows and "image" not in rows[0]:
        raise ConfigError(f"labels file {path} needs an `image` column naming each image file")
    return {str(row.pop("image")): row for row in rows}


def collect_folder(config: FolderDataset, out: DatasetImages, _: Path, __: Any) -> None:
    folder = Path(config.path)
    if not folder.is_dir():
        raise ConfigError(
            f"dataset {out.name}: path: {folder} is not a folder; point `path` at the folder "
            "of images"
        )
    labels = {}
    if config.labels:
        table = folder / config.labels
        if refused := escapes_root(folder, table):
            raise ConfigError(f"dataset {out.name}: labels: {refused}; keep it in the folder")
        if not table.is_file():  # missing, or a named pipe that would block the read
            raise ConfigError(
                f"dataset {out.name}: labels: {table} is not a file; name a CSV in the folder"
            )
        labels = _label_table(table)
    paths, refused = _folder_paths(config, folder)  # copies: see DatasetImages
    for path, reason in refused:
        out.error(path, reason)
    for path in paths:
        data = read_or_record(path, out)
        if data is None:
            continue
        image_id = out.add_image(data, path.resolve(), config.split)
        if image_id is None:
            continue
        found = labels.get(path.name, {})
        if config.concept_from:
            found = {**found, config.concept_label: concept_of(path, folder, config.concept_from)}
        kind = "folder" if config.prompt else None
        out.add_row(
            [image_id], config.prompt, found, found.get("label") if config.prompt else None,
            split=config.split, kind=kind, concept="label" if config.prompt else None,
        )  # fmt: skip


VLM_LENS_CONCEPT_NAME = re.compile(r"^(.+)_\d+$")


def concept_of(path: Path, folder: Path, concept_from: str) -> str:
    """An image's concept in a concept image set: its subfolder's name, or as VLM-Lens's
    concept scripts read its file name (`blue_01.jpg` -> `blue`; a stem without `_<digits>` is
    the concept itself)."""
    if concept_from == "subfolder":
        return path.relative_to(folder).parts[0]
    match = VLM_LENS_CONCEPT_NAME.match(path.stem)
    return match.group(1) if match else path.stem


def _folder_paths(config: FolderDataset, folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The folder's images (and refusals); with `concept_from: subfolder`, those of each
    subfolder instead, an image lying outside every subfolder refused as having no concept."""
    if config.concept_from != "subfolder":
        return folder_images_within(folder, distinct=False)
    paths: list[Path] = []
    refused: list[tuple[Path, str]] = []
    loose, _ = folder_images_within(folder, distinct=False)
    refused += [
        (p, f"{p} is not in a concept subfolder; move it into one named after its concept")
        for p in loose
        if p.parent == folder
    ]
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    if not subfolders:
        raise ConfigError(
            f"dataset {folder}: concept_from: subfolder, but {folder} has no subfolders; put "
            "each concept's images in a subfolder named after it (red/, blue/, ...)"
        )
    for sub in subfolders:
        inside, bad = folder_images_within(sub, distinct=False)
        paths += [p for p in inside if p.parent == sub]
        refused += bad
    return paths, refused


BLANK_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def collect_blank(
    config: BlankDataset, out: DatasetImages, rendered: str | Path, others: dict[str, DatasetImages]
) -> None:
    """Each question of dataset `of`, asked again with every one of its images blank. A
    blank input has no right answer of its own: the blind test scores its answer against
    each real row that asked the question."""
    source = others.get(config.of)
    if source is None:
        raise ConfigError(
            f"blank dataset {out.name!r} asks the questions of {config.of!r}, which is not a "
            f"dataset config; known: {', '.join(sorted(others)) or '(none)'}"
        )
    questions = [row for row in source.items if row.prompt]
    if not questions:
        raise ConfigError(f"dataset {config.of!r} has no questions for blank {out.name!r}")
    rng = np.random.default_rng(config.seed)
    side = config.image_size
    for colour in config.colours:
        if colour == "noise":
            pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            image = Image.fromarray(pixels, mode="RGB")
        else:
            image = Image.new("RGB", (side, side), BLANK_COLOURS[colour])
        path = files.join(rendered, out.name, f"blank-{colour}.png")
        blank = out.add_image(_write_png(image, path), path, colour)
        if blank is None:
            continue
        for q in questions:
            out.add_row(
                [blank] * len(q.image_ids),
                q.prompt,
                {"blank": colour},
                None,
                q.choices,
                colour,
                q.kind,
                q.concept,
            )


COLLECTORS: dict[type, Callable[[Any, DatasetImages, Path, dict[str, DatasetImages]], None]] = {
    GeneratedDataset: collect_generated,
    FolderDataset: collect_folder,
    ManifestDataset: collect_manifest,
    HfDataset: collect_hf,
    BlankDataset: collect_blank,
}


def collect_images(
    name: str,
    config: DatasetConfig,
    rendered: str | Path,
    others: dict[str, DatasetImages] | None = None,
) -> DatasetImages:
    """Every image of one dataset; `rendered` (a folder or an object-store prefix) holds
    generated or extracted files (`<rendered>/<name>/`), `others` the datasets already
    collected (for `blank`). The config's `concepts` and `control_type` (else a generator's
    own `CONCEPTS`) become the labels' roles in `row_labels`."""
    out = DatasetImages(checked_dataset_name(name))
    COLLECTORS[type(config)](config, out, rendered, others or {})
    concepts, strict = config.concepts, True
    if concepts is None and isinstance(config, GeneratedDataset):
        concepts, strict = generators.concepts(config.kind), False  # what this draw produced
    if concepts is not None or config.control_type is not None:
        out.declare(concepts, config.control_type, strict)
    return out


def collect_all(configs: dict[str, DatasetConfig], rendered: str | Path) -> list[DatasetImages]:
    """Collect every dataset, blank ones last (they read the others' questions)."""
    done: dict[str, DatasetImages] = {}
    ordered = sorted(configs, key=lambda n: (isinstance(configs[n], BlankDataset), n))
    for name in ordered:
        done[name] = collect_images(name, configs[name], rendered, done)
    return [done[name] for name in sorted(done)]
