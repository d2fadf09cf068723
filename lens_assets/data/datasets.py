"""Dataset configs (`configs/datasets/<name>.yaml`) and how each kind yields its images.

Kinds: the synthetic generators (`shapes`, `clevr_lite`, `stroop`, `correspondence`,
`odd_one_out`, `art_style`), `blank` (blank images asked another dataset's questions), and the
user's own data: `folder` (VLM-Lens's input_dir, optional labels CSV), `manifest` (CSV, Parquet
or JSONL) and `hf_disk` / `hf_hub` (Hugging Face datasets). Every kind ends as the same rows:
images, labels, prompts (with answers where known) and errors.
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lens_assets.config import ConfigError, read_yaml
from lens_assets.data import files, generators
from lens_assets.data.images import (
    ImageReadError,
    content_id,
    decode,
    duplicate_of,
    escapes_root,
    folder_images_within,
    read_image_file,
)

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
    path: str = Field(description="CSV, Parquet or JSONL: image_path, prompt, label, ...")
    split: str | None = None


class HfDataset(_Kind):
    """A Hugging Face dataset: a `save_to_disk` folder or local Parquet (`hf_disk`), or a hub
    id through `datasets.load_dataset` (`hf_hub`, where the hub is reachable)."""

    kind: Literal["hf_disk", "hf_hub"]
    path: str
    split: str | None = None
    image_column: str = "image"
    images_root: str | None = Field(default=None, description="For columns of file names.")
    prompt_column: str | None = "prompt"
    answer_column: str | None = "label"
    label_columns: list[str] | None = None  # default: every other scalar column
    limit: int | None = Field(default=None, ge=1)


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


@dataclass
class DatasetImages:
    """Rows for `images`, `image_labels`, `prompts` and `image_errors`.

    An image is its bytes: the same bytes met again are one image, one row. From another file
    (a copy) they are also an error row naming the first file, so the copy is seen, not lost."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    _first: dict[str, tuple[str, str]] = field(default_factory=dict, init=False, repr=False)
    _concepts: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)
    _asked: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)

    def add(
        self,
        data: bytes,
        path: Path | str,
        labels: dict[str, Any] | None = None,
        prompts: Iterable[tuple[str, str | None, str, str | None]] = (),
        split: str | None = None,
        source: str | None = None,
    ) -> str | None:
        """Record one image from its bytes; an unusable one becomes an error row. `source` is
        the file it came from when `path` is a copy written for it (a Hugging Face row).

        Met again, the image is not decoded again and adds only the labels (concepts) and
        questions (prompt texts) not known for it yet: a copy of a file asks nothing twice."""
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
        for concept, value in (labels or {}).items():
            missing = value is None or value != value or value == ""  # empty, NaN
            if missing or (image_id, concept) in self._concepts:
                continue
            self._concepts.add((image_id, concept))
            self.labels.append(
                {"image_id": image_id, "dataset": self.name, "concept": concept,
                 "value": str(value)}
            )  # fmt: skip
        # one file may ask one question several times (a blank image asked every image's
        # question); a second file of the same image only asks the ones not asked yet
        asked = {prompt for prompt, *_ in prompts if (image_id, prompt) not in self._asked}
        for prompt, answer, kind, concept in prompts:
            if prompt in asked:
                self.prompts.append(
                    {"image_id": image_id, "dataset": self.name, "prompt_id": len(self.prompts),
                     "prompt": prompt, "answer": answer, "kind": kind, "concept": concept}
                )  # fmt: skip
        self._asked.update((image_id, prompt) for prompt in asked)
        return image_id

    def path_of(self, image_id: str) -> str | None:
        """Where the image with this id is stored, once it has been added."""
        first = self._first.get(image_id)
        return first[1] if first else None

    def error(self, path: Path | str, message: str) -> None:
        self.errors.append({"dataset": self.name, "path": str(path), "error": message})


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
        path = files.join(rendered, out.name, f"{sample.name}.png")
        data = _write_png(sample.image, path)
        questions = [(q.question, q.answer, q.kind, q.concept) for q in sample.questions]
        out.add(data, path, sample.labels, questions, sample.split)


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
    prompt = [(config.prompt, None, "folder", "label")] if config.prompt else []
    paths, refused = folder_images_within(folder, distinct=False)  # copies: see DatasetImages
    for path, reason in refused:
        out.error(path, reason)
    for path in paths:
        data = _read(path, out)
        if data is not None:
            found = labels.get(path.name, {})
            answer = found.get("label")
            asked = [(p, answer, k, c) for p, _, k, c in prompt]
            out.add(data, path.resolve(), found, asked, config.split)


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


def collect_manifest(config: ManifestDataset, out: DatasetImages, _: Path, __: Any) -> None:
    manifest = Path(config.path).resolve()
    if not manifest.is_file():
        raise ConfigError(f"manifest {manifest} does not exist")
    root = manifest.parent
    for row in _manifest_rows(manifest):
        if not row.get("image_path"):
            raise ConfigError(f"manifest {manifest} needs an `image_path` column")
        path = root / str(row.pop("image_path"))
        if refused := escapes_root(root, path):
            out.error(path, f"{refused} (the manifest's folder)")
            continue
        path = path.resolve()
        data = _read(path, out)
        if data is None:
            continue
        split = row.pop("split", None) or config.split
        prompt, answer = row.pop("prompt", None), row.get("label")
        expected = None if answer is None else str(answer)
        prompts = [(prompt, expected, "manifest", "label")] if prompt else []
        out.add(data, path, row, prompts, split)


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
    if config.image_column in loaded.column_names:
        loaded = loaded.cast_column(config.image_column, datasets.Image(decode=False))
    if config.limit:
        loaded = loaded.select(range(min(config.limit, len(loaded))))
    return iter(loaded)


def _hf_image_bytes(
    value: Any, config: HfDataset, out: DatasetImages
) -> tuple[bytes, str | None] | None:
    """The image's bytes and the file they came from (None for bytes without a file name)."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"], str(value.get("path") or "") or None
    name = value.get("path") if isinstance(value, dict) else value
    if not name:
        out.error(config.path, f"a row has no image in column {config.image_column!r}")
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
        found = _hf_image_bytes(row.pop(config.image_column, None), config, out)
        if found is None:
            continue
        data, origin = found
        image_id = content_id(data)
        path = out.path_of(image_id)  # rows sharing an image share its file
        if path is None:
            path = files.join(rendered, out.name, f"{index:06d}-{image_id[:12]}.png")
            files.write_bytes(path, data)
        prompt = row.pop(config.prompt_column, None) if config.prompt_column else None
        answer = row.get(config.answer_column) if config.answer_column else None
        keys = config.label_columns or [k for k, v in row.items() if isinstance(v, str | int)]
        labels = {k: row[k] for k in keys if k in row}
        if config.answer_column and config.answer_column in labels:
            labels["label"] = labels.pop(config.answer_column)
        expected = None if answer is None else str(answer)
        prompts = [(str(prompt), expected, "dataset", "label")]
        out.add(data, path, labels, prompts if prompt else [], config.split, origin)


BLANK_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def collect_blank(
    config: BlankDataset, out: DatasetImages, rendered: str | Path, others: dict[str, DatasetImages]
) -> None:
    source = others.get(config.of)
    if source is None:
        raise ConfigError(
            f"blank dataset {out.name!r} asks the questions of {config.of!r}, which is not a "
            f"dataset config; known: {', '.join(sorted(others)) or '(none)'}"
        )
    if not source.prompts:
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
        questions = [(p["prompt"], p["answer"], p["kind"], p["concept"]) for p in source.prompts]
        out.add(_write_png(image, path), path, {"blank": colour}, questions, colour)


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
