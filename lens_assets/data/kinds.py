"""Dataset configs (`configs/datasets/<name>.yaml`): one pydantic model per kind, checked with
errors that name the field and the fix, and VLM-Lens's `dataset:` block mapped onto them."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lens_assets.config import ConfigError, read_yaml
from lens_assets.data import generators

IMAGE_KEYS = ("image_path", "image", "path", "file_name", "filename")


class _Kind(BaseModel):
    """What every kind may declare about its labels, for probing (`row_labels.role`)."""

    model_config = ConfigDict(extra="forbid")
    concepts: list[str] | None = Field(
        default=None,
        description="The labels that are concepts to probe; the others (ids, coordinates, "
        "answer letters) are not probed unless configs/probing.yaml asks. Left out: a "
        "generator's own list, else probing judges each label by its values.",
    )
    control_type: str | None = Field(
        default=None,
        description="A label naming each row's input for the probes' control task (Hewitt & "
        "Liang's word type), e.g. an object id shared by several photos; left out, a row's "
        "input is its images (their content hashes).",
    )

    @field_validator("concepts")
    @classmethod
    def _some_concepts(cls, concepts: list[str] | None) -> list[str] | None:
        if concepts is not None and not concepts:
            raise ValueError(
                "an empty list declares nothing: leave `concepts` out to let the generator or "
                "the labels' values decide, or list the labels to probe"
            )
        return None if concepts is None else list(dict.fromkeys(concepts))

    @model_validator(mode="after")
    def _type_is_not_a_concept(self) -> _Kind:
        if self.control_type and self.control_type in (self.concepts or ()):
            raise ValueError(
                f"control_type {self.control_type!r} is also listed in concepts: the control "
                "type names inputs, it is not a concept; list it in one of them"
            )
        return self


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
    concept_from: Literal["subfolder", "file_name"] | None = Field(
        default=None,
        description="A concept image set: each image's concept is the name of its subfolder "
        "(`red/01.png`), or VLM-Lens's file naming (`red_01.jpg`: the stem before `_<digits>`).",
    )
    concept_label: str = Field(default="concept", description="The label it is stored under.")


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
    `dataset_path` or `text_dataset_path` (a hub id, or a local folder) -> hf_hub / hf_disk;
    `image_dataset_path` (joined with `image_split`, as VLM-Lens joins them) holds the image
    files when the image column names files; `dataset_split` or `text_split` picks the split,
    and older configs' `answer_column` is `label_column`."""
    path = (
        block.get("local_dataset_path")
        or block.get("dataset_path")
        or block.get("text_dataset_path")
    )
    if not path:
        raise ConfigError(
            "a VLM-Lens dataset block needs local_dataset_path, dataset_path or text_dataset_path"
        )
    pattern = block.get("image_regex", "{id}")
    if pattern != "{id}":
        raise ConfigError(
            f"dataset: image_regex {pattern!r} is not supported: LensFlow joins the image "
            "column's value to image_dataset_path as it is; store the file names in the column"
        )
    images = block.get("image_dataset_path")
    if images and block.get("image_split"):
        images = str(Path(images) / str(block["image_split"]))
    local = bool(block.get("local_dataset_path")) or Path(str(path)).is_dir()
    return HfDataset(
        kind="hf_disk" if local else "hf_hub",
        path=str(path),
        split=block.get("dataset_split") or block.get("text_split") or block.get("split"),
        images_root=images,
        image_column=block.get("image_column", "image"),
        prompt_column=block.get("prompt_column", "prompt"),
        answer_column=block.get("label_column") or block.get("answer_column", "label"),
    )


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
