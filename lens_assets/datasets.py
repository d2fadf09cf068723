"""Dataset configs (`configs/datasets/<name>.yaml`): where a dataset's images come from.

Kinds so far: `shapes` (synthetic coloured shapes, rendered under the warehouse, labelled
with their colour and shape) and `folder` (the images of a folder, as VLM-Lens's input_dir).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lens_assets.config import ConfigError
from lens_assets.images import ImageReadError, folder_images, load_image
from lens_assets.synthetic import render_shapes


class ShapesDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["shapes"]
    size: int = Field(default=12, ge=1)
    seed: int = 0


class FolderDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["folder"]
    path: str


class DatasetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: Annotated[ShapesDataset | FolderDataset, Field(discriminator="kind")]


@dataclass
class DatasetImages:
    """A dataset's images (path, id, size) and ground-truth labels, ready for the warehouse."""

    name: str
    rows: list[dict[str, object]] = field(default_factory=list)
    labels: list[dict[str, object]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def load_dataset_config(path: Path) -> ShapesDataset | FolderDataset:
    try:
        data = yaml.safe_load(path.read_text())
        return DatasetFile.model_validate({"dataset": data}).dataset
    except yaml.YAMLError as error:
        raise ConfigError(f"dataset config {path} is not valid YAML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'kind'}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigError(
            f"invalid dataset config {path}: {problems} (kinds: shapes, folder)"
        ) from None


def collect_images(name: str, config: ShapesDataset | FolderDataset, root: Path) -> DatasetImages:
    """Render or find the dataset's images; `root` holds rendered ones (`<root>/<name>/`)."""
    result = DatasetImages(name)
    if isinstance(config, ShapesDataset):
        rendered = render_shapes(root / name, count=config.size, seed=config.seed)
        items = [(item.path, item.labels) for item in rendered]
    else:
        items = [(path, {}) for path in folder_images(config.path)]
    for path, labels in items:
        try:
            image = load_image(path)
        except ImageReadError as error:
            result.errors.append(str(error))
            continue
        result.rows.append(
            {
                "image_id": image.image_id,
                "dataset": name,
                "path": str(Path(path).resolve()),
                "width": image.width,
                "height": image.height,
                "split": None,
            }
        )
        result.labels.extend(
            {"image_id": image.image_id, "dataset": name, "concept": concept, "value": value}
            for concept, value in labels.items()
        )
    return result
