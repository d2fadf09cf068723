"""The user's tables as rows: a manifest (CSV, Parquet or JSONL, one row per line, one image,
several or none) and a Hugging Face dataset (one image column or several, as multi-image
benchmarks store them). Each row keeps its own prompt, answer, choices and label columns."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lens_assets.config import ConfigError
from lens_assets.data import files
from lens_assets.data.collected import DatasetImages, read_or_record
from lens_assets.data.images import content_id, escapes_root
from lens_assets.data.kinds import HfDataset, ManifestDataset
from lens_assets.data.rows import choices_of


def manifest_rows(path: Path) -> list[dict[str, Any]]:
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


def image_names(value: Any) -> list[str]:
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
    for number, row in enumerate(manifest_rows(manifest), start=1):
        column = next((c for c in ("image_paths", "image_path") if c in row), None)
        if column is None and not row.get("prompt"):
            raise ConfigError(
                f"manifest {manifest} row {number} needs an `image_path` column (or "
                f"`image_paths`), a `prompt`, or both; its columns are {', '.join(row)}"
            )
        ids = _manifest_images(image_names(row.pop(column, None)), root, out)
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
        data = read_or_record(path, out)
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
    data = read_or_record(path, out)
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
