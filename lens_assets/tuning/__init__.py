"""Trained and tuned models (issue 20): a tuning config in, a checkpoint that loads like any
model out. Plain functions, no Dagster, so a notebook can run them:

    config = load_tuning_config("configs/tuning/tutor.yaml")
    result = tune(config, "tutor", tuned_dir(models_dir, "tutor"), models_dir)
    loaded = load_model(result.model_config, "tutor", models_dir)

Methods: `full` (every weight, optionally from a fresh initialisation), `lora` (peft, merged into
the weights) and `prompt_tuning` (virtual tokens in the vocabulary, written by the chat
template; see `methods`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lens_assets.config import ModelConfig
from lens_assets.tuning.checkpoint import (
    METADATA_FILE,
    read_metadata,
    save_checkpoint,
    tuned_dir,
    tuned_model_config,
)
from lens_assets.tuning.config import (
    METHODS,
    LoraSpec,
    PromptTuningSpec,
    RowsSpec,
    TuningConfig,
    TuningConfigError,
    config_hash,
    load_tuning_config,
    parse_tuning_config,
    resolve_base,
    tuning_name,
)
from lens_assets.tuning.evaluation import Evaluation, KindScore, evaluate
from lens_assets.tuning.methods import (
    Base,
    Tunable,
    TuningNotSupported,
    apply_method,
    load_base,
    lora_targets,
    merged,
)
from lens_assets.tuning.rows import TrainingRow, load_rows, without_overlap
from lens_assets.tuning.training import Progress, answer_loss, train_steps, training_batch

__all__ = [
    "METADATA_FILE",
    "METHODS",
    "Base",
    "Evaluation",
    "KindScore",
    "LoraSpec",
    "Progress",
    "PromptTuningSpec",
    "RowsSpec",
    "TrainingRow",
    "Tunable",
    "TuneResult",
    "TuningConfig",
    "TuningConfigError",
    "TuningNotSupported",
    "answer_loss",
    "apply_method",
    "config_hash",
    "evaluate",
    "load_base",
    "load_rows",
    "load_tuning_config",
    "lora_targets",
    "merged",
    "parse_tuning_config",
    "read_metadata",
    "resolve_base",
    "save_checkpoint",
    "train_model",
    "train_steps",
    "training_batch",
    "tune",
    "tuned_dir",
    "tuned_model_config",
    "tuning_metadata",
    "tuning_name",
    "without_overlap",
]


@dataclass
class TuneResult:
    """What `tune` made: the checkpoint, the config that loads it, the loss per step."""

    name: str
    checkpoint: Path
    model_config: ModelConfig
    metadata: dict[str, object]
    losses: list[float]
    seconds: float
    rows: int  # training rows available (batches are drawn from them)


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def train_model(
    config: TuningConfig,
    base: Base,
    rows: Sequence[TrainingRow],
    progress: Progress | None = None,
) -> tuple[Tunable, list[float]]:
    """Apply the method to the loaded base and train it; the caller's RNG state is untouched
    and the same seed gives the same weights (on CPU)."""
    loaded = base.loaded
    with torch.random.fork_rng(devices=_rng_devices(loaded.device)):
        torch.manual_seed(config.seed)
        tunable = apply_method(config, loaded)
        losses = train_steps(loaded, tunable.model, tunable.trainable, config, rows, progress)
    return tunable, losses


def tuning_metadata(
    config: TuningConfig,
    name: str,
    base: Base,
    tunable: Tunable,
    losses: Sequence[float],
    rows: int,
) -> dict[str, object]:
    """What is saved beside a tuned checkpoint (`lens_tuning.json`): what it was made from,
    how, and the config hash that tells whether it is stale."""
    return {
        "name": name,
        "base": base.name,
        "base_model_path": base.path,
        "architecture": base.loaded.architecture.name,
        "method": config.method,
        "config_hash": config_hash(config),
        "from_scratch": config.from_scratch,
        "seed": config.seed,
        "steps": config.steps,
        "rows": rows,
        "lora_targets": tunable.lora_targets,
        "virtual_tokens": tunable.virtual_tokens,
        "final_loss": losses[-1] if losses else None,
        "losses": list(losses),
        "device": str(base.loaded.device),
        "dtype": str(base.loaded.dtype).removeprefix("torch."),
    }


def tune(
    config: TuningConfig,
    name: str,
    out_dir: str | Path,
    models_dir: str | Path,
    device: str = "cpu",
    dtype: str | None = "float32",
    rows: Sequence[TrainingRow] | None = None,
    progress: Progress | None = None,
    configs: Path | None = None,
) -> TuneResult:
    """Train the config's model on `rows` (default: its `train` rows, collected from the
    dataset config) and save the result in `out_dir` as a checkpoint `load_model` reads."""
    started = time.perf_counter()
    models_dir = Path(models_dir)
    if rows is None:
        _, base_config = resolve_base(config.base, configs)
        rows = load_rows(config.train, base_config.prompt, configs)
    base = load_base(config, models_dir, device, dtype, configs)
    tunable, losses = train_model(config, base, rows, progress)
    model = merged(tunable.model)
    base.loaded.model = model
    metadata = tuning_metadata(config, name, base, tunable, losses, len(rows))
    checkpoint = save_checkpoint(model, base.loaded.processor, out_dir, metadata)
    return TuneResult(
        name,
        checkpoint,
        tuned_model_config(base.config, checkpoint, config.datasets),
        metadata,
        losses,
        time.perf_counter() - started,
        len(rows),
    )
