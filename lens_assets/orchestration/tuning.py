"""The `tuned_model` asset (issue 20): a tuning config's model, trained, as a model partition.

Every model partition has a `tuned_model` step, and every asset that loads the model reads it,
so a run trains before it extracts, answers or analyses. For a tuning config
(`configs/tuning/<name>.yaml`) the step trains through `lens_assets.tuning.tune` and saves the
checkpoint under `<warehouse>/models/tuned/<name>`, where `ModelStep.config` points the
partition's other assets; for a plain model config it trains nothing and says so. Either way it
writes the model's row of the `models` table (name, base, method, config hash) and reports its
config's version as its data version, so running it again for an unchanged config leaves every
reader fresh, and editing one tuning config (or its base's config) restales only that model and
the models tuned from it.

A tuning config's base may be another tuning config (the tutor's variants): the step loads the
base's checkpoint, so the base must be trained, and current, first; `lens materialize` orders
the partitions so (`catalog.bases_first`), and a step run out of order says to materialize the
base. After training, the held-out rows are asked of the tuned model and of its base
(`tuning.effects`, table `tuning_answers`), and the `tuning_effects` asset draws the view of the
same name once the readouts (`vision_vs_vlm`) exist.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from dagster import AssetKey, DataVersion, MaterializeResult, MetadataValue

from lens_assets.analyses.tuning_plots import effects_chart, loss_curve
from lens_assets.catalog import ConfigFile, model_configs
from lens_assets.config import ConfigError, load_model_config
from lens_assets.orchestration import progress
from lens_assets.orchestration.metadata import markdown_table, picture_metadata
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.orchestration.sources import MODEL_CONFIG
from lens_assets.resources.schemas import MODELS, TUNING_ANSWERS, rows_table
from lens_assets.resources.warehouse import Warehouse

TUNED_MODEL = AssetKey("tuned_model")
TUNING_VERSION = "1"  # bump when training writes a different checkpoint for the same config
PROGRESS_LINES = 10  # a progress line every tenth of the steps (and at the last)


def config_file(name: str) -> ConfigFile:
    files = model_configs()
    if name not in files:
        raise ConfigError(
            f"model {name!r} has no config under configs/models/ or configs/tuning/ any more; "
            "restore the file or let the sensor remove the partition"
        )
    return files[name]


@per_model_asset(
    group="models",
    deps=[MODEL_CONFIG],
    code_version=TUNING_VERSION,
    loads_model=True,
    description="The model each partition runs. A tuning config (configs/tuning/<name>.yaml) "
    "is trained here from its base (loss per step, loss curve, held-out accuracy per question "
    "kind) and saved as a checkpoint under <warehouse>/models/tuned/<name>; a model config "
    "trains nothing (its checkpoint is its model_path). Writes the model's row of table "
    "`models` (name, base, method, config hash).",
)
def tuned_model(step: ModelStep) -> MaterializeResult:
    file = config_file(step.name)
    return _train(step, file) if file.tuned else _plain(step, file)


def _plain(step: ModelStep, file: ConfigFile) -> MaterializeResult:
    """Nothing to train: record what the model is, cheaply (no weights are loaded)."""
    config = load_model_config(file.path)
    row = _row(file, kind="model", base=None, method="none", config_hash=file.version,
               checkpoint=config.model_path)  # fmt: skip
    with step.warehouse.session() as wh:
        _write(wh, file.name, row, [])
    return MaterializeResult(
        data_version=DataVersion(file.version),
        metadata={
            "trained": "nothing: a model config, not a tuning config; the model runs its "
            "config's checkpoint",
            "method": "none",
            "checkpoint": config.model_path,
            "config": MetadataValue.path(str(file.path)),
        },
    )


def _train(step: ModelStep, file: ConfigFile) -> MaterializeResult:
    """Train the tuning config's model, save it, and ask it and its base the held-out rows."""
    from lens_assets import tuning  # torch and peft: only where a model is trained
    from lens_assets.tuning.effects import answer_records

    name, log = file.name, step.context.log
    config = tuning.load_tuning_config(file.path)
    models_dir = step.warehouse.location().models_dir
    # a tuned base must be trained (and current) first: said before any row is rendered
    base_name, base = tuning.resolve_base(config.base, models_dir=models_dir)
    device, dtype = _device_and_dtype(step)
    with tempfile.TemporaryDirectory(prefix="lens-tuning-") as rendered:
        rows = tuning.load_rows(config.train, base.prompt, rendered=rendered)
        held = (
            tuning.without_overlap(
                tuning.load_rows(config.held_out, base.prompt, rendered=rendered), rows
            )
            if config.held_out
            else []
        )
    every = max(1, config.steps // PROGRESS_LINES)

    def report(done: int, steps: int, loss: float) -> None:
        if done % every == 0 or done == steps:
            line = f"{name}: tuned_model step {done}/{steps}, loss {loss:.4f}"
            log.info(line)
            progress.announce(f"    {line}")

    with step.warehouse.session() as wh:
        log.info(f"{name}: training {config.method} from {base_name} for {config.steps} steps "
                 f"on {len(rows)} rows")  # fmt: skip
        result = tuning.tune(
            config, name, tuning.tuned_dir(models_dir, name), models_dir,
            device=device, dtype=dtype, rows=rows, progress=report,
        )  # fmt: skip
        scores: dict[str, Any] = {}
        overall = base_overall = None
        answered: list[dict[str, Any]] = []
        if held:  # the same rows, asked of the tuned model and of its base
            runtime = step.runtime
            with runtime.model(result.model_config, name, wh) as loaded:
                evaluation, answered = answer_records(
                    loaded, held, name, "tuned", runtime.effective_batch_size(result.model_config)
                )
            with runtime.model(base, base_name, wh) as loaded:
                base_evaluation, base_answered = answer_records(
                    loaded, held, name, "base", runtime.effective_batch_size(base)
                )
            answered += base_answered
            overall, base_overall = evaluation.accuracy, base_evaluation.accuracy
            scores = {kind: s for kind, s in evaluation.by_kind.items()}
        picture = loss_curve(
            result.losses, name, wh.root / "reports" / name / "loss_curve.png",
            {kind: (s.accuracy, s.chance) for kind, s in scores.items()},
        )  # fmt: skip
        row = _row(
            file, kind="tuning", base=base_name, method=config.method,
            config_hash=tuning.config_hash(config), checkpoint=str(result.checkpoint),
            steps=config.steps, final_loss=result.losses[-1], seconds=result.seconds,
            held_out_accuracy=overall,
        )  # fmt: skip
        _write(wh, name, row, answered)
    held_rows = [
        {"kind": kind, "n": s.n, "accuracy": f"{s.accuracy:.3f}", "chance": f"{s.chance:.3f}"}
        for kind, s in scores.items()
    ]
    log.info(f"{name}: final loss {result.losses[-1]:.4f} after {result.seconds:.1f} s; "
             f"held-out accuracy {_rounded(overall)} (base {base_name}: "
             f"{_rounded(base_overall)})")  # fmt: skip
    return MaterializeResult(
        data_version=DataVersion(file.version),
        metadata={
            "trained": f"{config.method} from {base_name}",
            "method": config.method,
            "base": base_name,
            "steps": config.steps,
            "rows": result.rows,
            "seconds": MetadataValue.float(round(result.seconds, 3)),
            "final_loss": MetadataValue.float(round(result.losses[-1], 6)),
            "losses": MetadataValue.json([round(loss, 6) for loss in result.losses]),
            "held_out_accuracy": MetadataValue.json(
                {kind: round(s.accuracy, 4) for kind, s in scores.items()}
            ),
            **(
                {"base_held_out_accuracy": MetadataValue.float(round(base_overall, 4))}
                if base_overall is not None
                else {}
            ),
            "held_out": markdown_table(held_rows)
            if held_rows
            else MetadataValue.md(
                "(no held-out rows: the config names none, or every one shows a training image)"
            ),
            "checkpoint": MetadataValue.path(str(result.checkpoint)),
            "config_hash": tuning.config_hash(config),
            **picture_metadata("loss_curve", picture, "training loss"),
        },
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _write(wh: Warehouse, name: str, row: dict[str, Any], answered: list[dict[str, Any]]) -> None:
    """The model's row of `models` and its held-out answers (none for a plain model, or a
    tuned one without held-out rows), replaced in one transaction."""
    wh.replace_rows(
        "model = ?",
        [name],
        {
            "models": rows_table(MODELS, [row]),
            "tuning_answers": rows_table(TUNING_ANSWERS, answered),
        },
    )


def _device_and_dtype(step: ModelStep) -> tuple[str | None, str | None]:
    """The runtime's device and dtype, as the other steps load the model with them."""
    runtime = step.runtime
    return (
        runtime.device or os.environ.get("LENS_DEVICE"),
        runtime.dtype or os.environ.get("LENS_DTYPE"),
    )


def _row(file: ConfigFile, **values: Any) -> dict[str, Any]:
    """The model's row of `models`; what a plain model has not (steps, loss) is NULL."""
    empty = {"steps": None, "final_loss": None, "seconds": None, "held_out_accuracy": None}
    return {"model": file.name, "version": file.version, "config": str(file.path), **empty,
            **values}  # fmt: skip


VISION_VS_VLM = AssetKey("vision_vs_vlm")  # its asset module reads this one's key
TUNING_EFFECTS_VERSION = "1"
EFFECT_COLUMNS = (
    "dataset, n, chance, accuracy, base_accuracy, vision_readout, base_vision_readout, "
    "projector_readout, base_projector_readout, language_readout, base_language_readout, "
    "tv_labels, base_tv_labels, image_share, base_image_share"
)


@per_model_asset(
    group="models",
    deps=[TUNED_MODEL, VISION_VS_VLM],
    code_version=TUNING_EFFECTS_VERSION,
    description="A tuned model beside its base on the same held-out rows (view "
    "`tuning_effects`): the VLM's accuracy, the best layer-wise readout per stage (vision, "
    "projector, language model), the total-variation distance of its answers to the labels "
    "and the image share of the answer position's attention, drawn as paired bars. A model "
    "config has no base: nothing to draw.",
)
def tuning_effects(step: ModelStep) -> MaterializeResult:
    name = step.name
    if not config_file(name).tuned:
        return MaterializeResult(metadata={"compared": "nothing: a model config, not tuned"})
    with step.warehouse.session() as wh:
        found = wh.fetch_arrow(
            f"SELECT model, method, base, {EFFECT_COLUMNS} FROM tuning_effects WHERE model = ?",
            [name],
        ).to_pylist()
        picture = (
            effects_chart(found[0], wh.root / "reports" / name / "tuning_effects.png")
            if found
            else None
        )
    if not found:
        return MaterializeResult(
            metadata={"compared": "nothing: its tuning config names no held-out rows"}
        )
    row = found[0]
    shown = [
        {"measure": column, name: _shown(row[column]), row["base"]: _shown(row[f"base_{column}"])}
        for column in ("accuracy", "vision_readout", "projector_readout", "language_readout",
                       "tv_labels", "image_share")
    ]  # fmt: skip
    return MaterializeResult(
        metadata={
            "compared": f"{name} ({row['method']}) beside {row['base']} on {row['n']} "
            f"held-out rows of {row['dataset']}",
            "effects": markdown_table(shown),
            **picture_metadata("tuning_effects", picture, f"{name} beside {row['base']}"),
        }
    )


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
