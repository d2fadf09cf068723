"""Saving a tuned model: a safetensors checkpoint of the base's own class, its processor, and a
small metadata file naming the base, the method and the config's hash.

The folder loads through `capture.loading.load_model` like any checkpoint: `tuned_model_config`
is the base's model config with `model_path` pointing at it. It is written beside its final
place and renamed into it, so a crash mid-save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from lens_assets.config import ModelConfig

__all__ = [
    "METADATA_FILE",
    "read_metadata",
    "save_checkpoint",
    "tuned_dir",
    "tuned_model_config",
]

METADATA_FILE = "lens_tuning.json"
TUNED = "tuned"  # under the warehouse's models folder, beside the tiny checkpoints


def tuned_dir(models_dir: str | Path, name: str) -> Path:
    """Where the tuned model `name` (its tuning config's stem) is saved by default."""
    return Path(models_dir) / TUNED / name


def save_checkpoint(
    model: nn.Module, processor: Any, out_dir: str | Path, metadata: dict[str, Any]
) -> Path:
    """Write model (safetensors), processor and metadata into `out_dir`, replacing it whole."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial, safe_serialization=True)
        processor.save_pretrained(partial)
        text = json.dumps(metadata, indent=2, sort_keys=True)
        (partial / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def read_metadata(folder: str | Path) -> dict[str, Any] | None:
    """The tuning metadata saved beside a checkpoint, or None for a checkpoint not tuned here."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def tuned_model_config(
    base: ModelConfig, checkpoint: str | Path, datasets: list[str] | None = None
) -> ModelConfig:
    """The tuned model's config: the base's (architecture, prompt, modules, pooling) with its
    weights from `checkpoint`, so extraction and every analysis run on it unchanged; `datasets`
    (the tuning config's) replaces the base's list where given."""
    update: dict[str, object] = {"model_path": str(Path(checkpoint).resolve())}
    if datasets is not None:
        update["datasets"] = list(datasets)
    return base.model_copy(update=update)
