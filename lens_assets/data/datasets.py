"""Dataset configs (`configs/datasets/<name>.yaml`) and how each kind yields its rows.

Every kind ends as the same dataset rows (lens_assets.data.rows): images, a prompt, labels, an
answer and choices where known, plus the files it could not use. Kinds: the synthetic
generators (`shapes`, `clevr_lite`, `stroop`, `correspondence`, `odd_one_out`, `art_style`),
`blank` (another dataset's questions asked about blank images), and the user's own data:
`folder` (VLM-Lens's input_dir, optional labels CSV), `manifest` (CSV, Parquet or JSONL, one or
several images per row) and `hf_disk` / `hf_hub` (Hugging Face datasets, several image columns
where a benchmark has them).
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lens_assets.config import ConfigError, read_yaml
from lens_assets.data import files, generators
from lens_assets.data.collected import DatasetImages
from lens_assets.data.images import (
    ImageReadError,
    content_id,
    escapes_root,
    folder_images_within,
    read_image_file,
)
from lens_assets.data.rows import choices_of

IMAGE_KEYS = ("image_path", "image", "path", "file_name", "filename")


class _Kind(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeneratedDataset(_Kind):
    """A synthetic generator; keys besides kind/size/seed are the generator's own params."""

    model_config = ConfigDict(extra="allow")
    kind: str
    size: int = Field(default=48, ge=1)
    seed: int = 0


class FolderDataset(_Kind):
    kind: Literal["folder"]
    path: str
    labels: str | None = Field(default=None, description="CSV: `image` (file name) + concepts")
    prompt: str | None = None
    split: str | None = None


class ManifestDataset(_Kind):
    kind: Literal["manifest"]
    path: str = Field(
        description="CSV, Parquet or JSONL, one row per line: image_path (or image_paths, a "
        "list or `a.png|b.png`; none for a text-only row), prompt, answer, choices, split, "
        "and label columns"
    )
    split: str | None = None


class HfDataset(_Kind):
    """A Hugging Face dataset: a `save_to_disk` folder or local Parquet (`hf_disk`), or a hub
    id through `datasets.load_dataset` (`hf_hub`, where the hub is reachable)."""

    kind: Literal["hf_disk", "hf_hub"]
    path: str
    split: str | None = None
    image_column: str = "image"
    image_columns: list[str] | None = Field(
        default=None, description="Several image columns in order (image_1..image_4)."
    )
    images_root: str | None = Field(default=None, description="For columns of file names.")
    prompt_column: str | None = "prompt"
    answer_column: str | None = "label"
    label_columns: list[str] | None = None  # default: every other scalar column
    limit: int | None = Field(default=None, ge=1)

    def image_columns_in(self, names: list[str]) -> list[str]:
        """The image columns this dataset has, in order: the configured list, else
        `image_column`, else image_1, image_2, ... (multi-image benchmarks)."""
        if self.image_columns:
            return [c for c in self.image_columns if c in names]
        if self.image_column in names:
            return [self.image_column]
        numbered = sorted(
            (n for n in names if re.fullmatch(r"image_?\d+", n)),
            key=lambda n: int(re.sub(r"\D", "", n)),
        )
        return numbered


class BlankDataset(_Kind):
    """Blank images asked every question of dataset `of`: does the model look at the image?"""

    kind: Literal["blank"]
    of: str
    colours: list[Literal["white", "black", "noise"]] = Field(default_factory=lambda: ["white"])
    image_size: int = Field(default=224, ge=8)
    seed: int = 0


DatasetConfig = GeneratedDataset | FolderDataset | ManifestDataset | HfDataset | BlankDataset
KIND_MODELS: dict[str, type[_Kind]] = {
    "folder": FolderDataset,
    "manifest": ManifestDataset,
    "hf_disk": HfDataset,
    "hf_hub": HfDataset,
    "blank": BlankDataset,
    **dict.fromkeys(generators.GENERATORS, GeneratedDataset),
}


def parse_dataset_config(data: Any, source: str) -> DatasetConfig:
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(
            f"invalid dataset config {source}: expected a mapping with a `kind` "
            f"({', '.join(sorted(KIND_MODELS))})"
        )
    kind = str(data["kind"])
    if kind not in KIND_MODELS:
        close = difflib.get_close_matches(kind, list(KIND_MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"invalid dataset config {source}: kind: unknown kind {kind!r}{hint}; known kinds: "
            f"{', '.join(sorted(KIND_MODELS))}"
        )
    try:
        config = KIND_MODELS[kind].model_validate(data)
        if isinstance(config, GeneratedDataset):
            generators.params_model(kind).model_validate(config.model_extra or {})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'kind'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"invalid dataset config {source}: {problems}") from None
    return config  # type: ignore[return-value]


def load_dataset_config(path: Path) -> DatasetConfig:
    return parse_dataset_config(read_yaml(path, "dataset config"), str(path))


def vlm_lens_dataset(block: dict[str, Any]) -> DatasetConfig:
    """VLM-Lens's `dataset:` block as a LensFlow kind: `local_dataset_path` -> hf_disk,
    `dataset_path` (a hub id) -> hf_hub; `image_dataset_path` holds the image files when the
    image column names files; `dataset_split` picks the split."""
    path = block.get("local_dataset_path") or block.get("dataset_path")
    if not path:
        raise ConfigError("a VLM-Lens dataset block needs local_dataset_path or dataset_path")
    return HfDataset(
        kind="hf_disk" if block.get("local_dataset_path") else "hf_hub",
        path=str(path),
        split=block.get("dataset_split") or block.get("split"),
        images_root=block.get("image_dataset_path"),
        image_column=block.get("image_column", "image"),
        prompt_column=block.get("prompt_column", "prompt"),
        answer_column=block.get("label_column", "label"),
    )


def _write_png(image: Image.Image, location: str) -> bytes:
    """Save deterministically; an unchanged file is not rewritten (its mtime stays)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    files.write_bytes(location, data)
    return data


def _read(path: Path, out: DatasetImages) -> bytes | None:
    """The file's bytes, or None with the reason recorded (only a regular file under the size
    cap is read: a named pipe among the images must not hang the run)."""
    try:
        return read_image_file(path)
    except ImageReadError as error:
        out.error(path, str(error))
        return None


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
    paths, refused = folder_images_within(folder, distinct=False)  # copies: see DatasetImages
    for path, reason in refused:
        out.error(path, reason)
    for path in paths:
        data = _read(path, out)
        if data is None:
            continue
        image_id = out.add_image(data, path.resolve(), config.split)
        if image_id is None:
            continue
        found = labels.get(path.name, {})
        kind = "folder" if config.prompt else None
        out.add_row(
            [image_id], config.prompt, found, found.get("label") if config.prompt else None,
            split=config.split, kind=kind, concept="label" if config.prompt else None,
        )  # fmt: skip


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.csv as pv
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    readers: dict[str, Callable[[Path], Any]] = {
        ".csv": pv.read_csv,
        ".parquet": pq.read_table,
        ".jsonl": pj.read_json,
        ".json": pj.read_json,
    }
    if path.suffix.lower() not in readers:
        raise ConfigError(f"manifest {path}: use a .csv, .parquet or .jsonl file")
    return readers[path.suffix.lower()](path).to_pylist()


# Row columns every tabular kind reads; the other scalar columns are labels.
ROW_COLUMNS = ("prompt", "answer", "choices", "split", "kind", "concept")


def _path_list(value: Any) -> list[str]:
    """A row's image files: one name, a list, or names separated by `|` (a CSV cell); none
    for a text-only row."""
    if value is None or value != value or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split("|") if part.strip()]
    return [str(part) for part in value if part]


def collect_manifest(config: ManifestDataset, out: DatasetImages, _: Path, __: Any) -> None:
    manifest = Path(config.path).resolve()
    if not manifest.is_file():
        raise ConfigError(f"manifest {manifest} does not exist")
    root = manifest.parent
    for number, row in enumerate(_manifest_rows(manifest), start=1):
        column = next((c for c in ("image_paths", "image_path") if c in row), None)
        if column is None and not row.get("prompt"):
            raise ConfigError(
                f"manifest {manifest} row {number} needs an `image_path` column (or "
                f"`image_paths`), a `prompt`, or both; its columns are {', '.join(row)}"
            )
        ids = _manifest_images(_path_list(row.pop(column, None)), root, out)
        if ids is None:
            continue
        _add_tabular_row(out, ids, row, config.split)


def _manifest_images(names: list[str], root: Path, out: DatasetImages) -> list[str] | None:
    """The row's image ids in order, or None when one of them cannot be used (the whole row
    is left out: a question about two pictures cannot be asked about one)."""
    ids = []
    for name in names:
        path = root / name
        if refused := escapes_root(root, path):
            out.error(path, f"{refused} (the manifest's folder)")
            return None
        path = path.resolve()
        data = _read(path, out)
        image_id = None if data is None else out.add_image(data, path)
        if image_id is None:
            return None
        ids.append(image_id)
    return ids


def _add_tabular_row(
    out: DatasetImages,
    ids: list[str],
    row: dict[str, Any],
    split: str | None,
    answer_column: str = "answer",
    label_columns: list[str] | None = None,
) -> None:
    """A manifest or Hugging Face row: its own prompt, answer, choices; the rest are labels.
    A `label` column is the answer where there is no answer column (VLM-Lens's layout)."""
    prompt = row.pop("prompt", None)
    answer = row.pop(answer_column, None) if answer_column != "label" else row.get("label")
    if answer is None and prompt:
        answer = row.get("label")
    choices = choices_of(row.pop("choices", None))
    row_split = row.pop("split", None) or split
    kind = row.pop("kind", None)
    concept = row.pop("concept", None)
    keys = label_columns or [k for k, v in row.items() if isinstance(v, str | int | float | bool)]
    labels = {k: row[k] for k in keys if k in row}
    if prompt and answer is not None:
        kind = kind or "dataset"
        concept = concept or ("label" if "label" in labels else None)
    out.add_row(
        ids, None if prompt is None else str(prompt), labels,
        None if answer is None or not prompt else answer, choices, row_split, kind, concept,
    )  # fmt: skip


def _hf_rows(config: HfDataset) -> Iterable[dict[str, Any]]:
    import datasets

    source = Path(config.path)
    try:
        if config.kind == "hf_hub":
            loaded = datasets.load_dataset(config.path, split=config.split)
        elif source.is_file() or source.suffix == ".parquet":
            loaded = datasets.load_dataset("parquet", data_files=str(source), split="train")
        else:
            loaded = datasets.load_from_disk(str(source))
    except (OSError, ValueError, RuntimeError) as error:
        # e.g. a dataset that ships a loading script: `datasets` refuses to run it
        raise ConfigError(f"{config.kind} dataset {config.path}: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = config.split or next(iter(loaded))
        if split not in loaded:
            raise ConfigError(f"{config.path} has no split {split!r}; it has {list(loaded)}")
        loaded = loaded[split]
    for column in config.image_columns_in(loaded.column_names):
        if isinstance(loaded.features[column], datasets.Image):
            loaded = loaded.cast_column(column, datasets.Image(decode=False))
    if config.limit:
        loaded = loaded.select(range(min(config.limit, len(loaded))))
    return iter(loaded)


def _hf_image_bytes(
    value: Any, column: str, config: HfDataset, out: DatasetImages
) -> tuple[bytes, str | None] | None:
    """The image's bytes and the file they came from (None for bytes without a file name)."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"], str(value.get("path") or "") or None
    name = value.get("path") if isinstance(value, dict) else value
    if not name:
        out.error(config.path, f"a row has no image in column {column!r}")
        return None
    root = Path(config.images_root or Path(config.path).parent)
    path = root / str(name)
    if refused := escapes_root(root, path):
        out.error(path, f"{refused} (the image root)")
        return None
    path = path.resolve()
    data = _read(path, out)
    return (data, str(path)) if data is not None else None


def collect_hf(config: HfDataset, out: DatasetImages, rendered: str | Path, _: Any) -> None:
    for index, row in enumerate(_hf_rows(config)):
        columns = config.image_columns_in(list(row))
        ids: list[str] | None = []
        for column in columns:
            value = row.pop(column, None)
            if value is None and column != config.image_column and len(columns) > 1:
                continue  # image_3, image_4 empty on a two-image row
            found = _hf_image_bytes(value, column, config, out)
            image_id = None if found is None else _store_hf_image(found, index, out, rendered)
            if image_id is None:
                ids = None
                break
            ids.append(image_id)
        if ids is None:
            continue
        if config.prompt_column and config.prompt_column != "prompt":
            row["prompt"] = row.pop(config.prompt_column, None)
        _add_tabular_row(
            out, ids, row, config.split, config.answer_column or "answer", config.label_columns
        )


def _store_hf_image(
    found: tuple[bytes, str | None], index: int, out: DatasetImages, rendered: str | Path
) -> str | None:
    data, origin = found
    image_id = content_id(data)
    path = out.path_of(image_id)  # rows sharing an image share its file
    if path is None:
        path = files.join(rendered, out.name, f"{index:06d}-{image_id[:12]}.png")
        files.write_bytes(path, data)
    return out.add_image(data, path, None, origin)


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


DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+=,@-]{0,127}")


def checked_dataset_name(name: str) -> str:
    """A dataset's name is also a folder name (`<rendered>/<name>/`): a plain name, so no
    name can write outside that folder (`../../x`, `/tmp/x`, `.hidden`)."""
    if not DATASET_NAME.fullmatch(name):
        raise ConfigError(
            f"dataset name {name!r} is not a plain name: use letters, digits and . _ - (at "
            "most 128, starting with a letter or digit), with no / and no leading dot"
        )
    return name


def collect_images(
    name: str,
    config: DatasetConfig,
    rendered: str | Path,
    others: dict[str, DatasetImages] | None = None,
) -> DatasetImages:
    """Every image of one dataset; `rendered` (a folder or an object-store prefix) holds
    generated or extracted files (`<rendered>/<name>/`), `others` the datasets already
    collected (for `blank`)."""
    out = DatasetImages(checked_dataset_name(name))
    COLLECTORS[type(config)](config, out, rendered, others or {})
    return out


def collect_all(configs: dict[str, DatasetConfig], rendered: str | Path) -> list[DatasetImages]:
    """Collect every dataset, blank ones last (they read the others' questions)."""
    done: dict[str, DatasetImages] = {}
    ordered = sorted(configs, key=lambda n: (isinstance(configs[n], BlankDataset), n))
    for name in ordered:
        done[name] = collect_images(name, configs[name], rendered, done)
    return [done[name] for name in sorted(done)]
