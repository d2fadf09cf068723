"""The interpretability assets, per model: where the model looks (attention_maps), when the
answer appears (logit_lens), what the answer depends on (attributions), and which layers and
heads carry it (patching_effects, ablation_effects). One step loads the model once for all
five; `configs/interpretability.yaml` says what each computes."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from dagster import AssetKey, MaterializeResult, MetadataValue

from lens_assets.analyses.answers import answerable, questions_of
from lens_assets.analyses.attention import (
    ATTENTION_MAP_ROWS,
    attention_maps,
    attention_summary,
    head_mean_map,
    render_attention_overlay,
)
from lens_assets.analyses.attribution import (
    ATTRIBUTION_ROWS,
    Attribution,
    attribute,
    attribution_rows,
    gradcam_layer,
    render_attributions,
)
from lens_assets.analyses.behaviour import BehaviourNotSupported, require_generation
from lens_assets.analyses.interpretability import (
    InterpretabilitySettings,
    load_settings,
    pick_questions,
)
from lens_assets.analyses.interventions import (
    ABLATION_ROWS,
    PATCHING_ROWS,
    ablation_effects,
    patching_effects,
)
from lens_assets.analyses.logit_lens import LOGIT_LENS_ROWS, logit_lens
from lens_assets.analyses.patches import frame_box
from lens_assets.analyses.reports import layer_curves
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import select_modules, short_layer
from lens_assets.catalog import settings_version
from lens_assets.config import configs_dir
from lens_assets.data.images import load_image
from lens_assets.orchestration.assets import DATASET_ROWS, IMAGE_LABELS, IMAGES, PROMPTS
from lens_assets.orchestration.metadata import markdown_image, markdown_table
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.orchestration.sources import MODEL_CONFIG
from lens_assets.orchestration.tuning import TUNED_MODEL
from lens_assets.resources.warehouse import Warehouse

SETTINGS_FILE = "interpretability.yaml"
TABLES: dict[str, pa.Schema] = {
    "attention_maps": ATTENTION_MAP_ROWS,
    "logit_lens": LOGIT_LENS_ROWS,
    "attributions": ATTRIBUTION_ROWS,
    "patching_effects": PATCHING_ROWS,
    "ablation_effects": ABLATION_ROWS,
}
DESCRIPTIONS = {
    "attention_maps": "Attention from the answer position to every image patch, per layer and "
    "head, with the share of attention on image tokens (table attention_maps; view "
    "attention_image_share).",
    "logit_lens": "Each LLM layer read through the final norm and output head at the answer "
    "position: top tokens, and the label's rank and probability (table logit_lens; view "
    "answer_emergence).",
    "attributions": "Grad-CAM on a vision-tower block and input x gradient on the pixels, for "
    "the answer token's logit (table attributions).",
    "patching_effects": "Activation patching from clean into corrupted images, per layer, all "
    "or image positions: how much of the answer logit comes back (table patching_effects).",
    "ablation_effects": "Attention heads ablated (zero or mean) as configured: the change in the "
    "answer logit and the output distribution (table ablation_effects).",
}


def settings() -> InterpretabilitySettings:
    return load_settings(configs_dir() / SETTINGS_FILE)


@per_model_asset(
    group="interpretability",
    deps=[MODEL_CONFIG, TUNED_MODEL, IMAGES, PROMPTS, IMAGE_LABELS, DATASET_ROWS],
    # The settings file is part of the code: editing it makes every model stale.
    code_version=f"2-{settings_version(SETTINGS_FILE)}",
    loads_model=True,
    description=DESCRIPTIONS,  # five assets, one step: the model loads once for all of them
)
def interpretability(step: ModelStep) -> Iterator[MaterializeResult]:
    name, modelled = step.name, step.datasets()
    chosen = settings()
    with step.warehouse.session() as wh:
        datasets = [d for d in modelled if d in chosen.datasets]
        asked = [
            {**q, "image_id": q["image_ids"][0] if q["image_ids"] else None,
             "path": q["paths"][0] if q["paths"] else None}
            for q in (questions_of(wh, datasets) if datasets else [])
            if q["expected"] is not None and q["image_ids"]
        ]  # fmt: skip
        questions = pick_questions(asked, chosen.concept, chosen.max_items)
        if not questions:  # decided before the model is loaded: nothing to pay for
            reason = f"no questions about {chosen.concept!r} in datasets {chosen.datasets}"
            yield from _skipped(wh, name, reason)
            return
        with step.load(wh) as loaded:
            try:
                require_generation(loaded)  # every analysis reads the answer token's logit
            except BehaviourNotSupported as reason:
                yield from _skipped(wh, name, str(reason))
                return
            questions = answerable(loaded, questions)  # as many images as the family takes
            if not questions:
                yield from _skipped(wh, name, f"{name} takes none of the rows' questions")
                return
            tables, heatmaps = analyse(loaded, wh, questions, chosen, step.batch_size)
            pictures = render(loaded, tables, heatmaps, questions, wh.root / "reports" / name)
        for table, rows in tables.items():
            wh.replace_model_rows(table, name, rows)
    for table, rows in tables.items():
        metadata: dict[str, Any] = {"rows": rows.num_rows}
        for index, picture in enumerate(pictures.get(table, [])):
            metadata[f"plot {picture.stem}" if index else "plot"] = markdown_image(picture, table)
        if table == "attention_maps":
            metadata["image_share_by_layer"] = markdown_table(share_by_layer(rows))
        yield MaterializeResult(asset_key=AssetKey(table), metadata=metadata)


def share_by_layer(rows: pa.Table) -> list[dict[str, Any]]:
    """Mean image share per layer, in depth order: the UI's table beside the maps."""
    summary = attention_summary(rows).to_pylist()
    return [
        {"layer": r["layer"], "maps": r["maps"], "image_share": round(r["mean_image_share"], 3)}
        for r in summary
    ]


def _skipped(wh: Warehouse, name: str, reason: str) -> Iterator[MaterializeResult]:
    for table, schema in TABLES.items():
        wh.replace_model_rows(table, name, schema.empty_table())
        yield MaterializeResult(
            asset_key=AssetKey(table), metadata={"rows": 0, "skipped": MetadataValue.text(reason)}
        )


def _with_dataset(table: pa.Table, datasets: list[str]) -> pa.Table:
    return table.append_column("dataset", pa.array(datasets, pa.string()))


def analyse(
    loaded: LoadedModel,
    wh: Warehouse,
    questions: list[dict[str, Any]],
    chosen: InterpretabilitySettings,
    batch_size: int,
) -> tuple[dict[str, pa.Table], list[Attribution]]:
    """The five tables, and the first one-image question's heatmaps (for the picture).

    Attention, the logit lens and head ablation read every row as it was asked, all its images
    in one prompt; Grad-CAM reads the one-image rows (its maps are per image)."""
    pictures = {path: load_image(path).image for q in questions for path in q["paths"]}
    images = [[pictures[path] for path in q["paths"]] for q in questions]
    prompts = [q["prompt"] for q in questions]
    ids = [q["image_id"] for q in questions]
    names = loaded.module_names
    attention_layers = select_modules(names, chosen.attention.layers)
    keys = [q.get("row_key") for q in questions]
    attention = attention_maps(
        loaded, images, prompts, attention_layers, [q["image_ids"] for q in questions],
        batch_size, row_keys=keys,
    )  # fmt: skip
    lens = logit_lens(
        loaded, images, prompts, [q["expected"] for q in questions], ids,
        top_k=chosen.logit_lens.top_k, batch_size=batch_size,
    )  # fmt: skip
    single = [q for q in questions if len(q["image_ids"]) == 1]
    one_image = [pictures[q["paths"][0]] for q in single]
    cam_layer = (
        select_modules(names, [chosen.attribution.layer])[0]
        if chosen.attribution.layer
        else gradcam_layer(loaded)
    )
    found = [
        attribute(loaded, image, q["prompt"], layers=[cam_layer])
        for image, q in zip(one_image, single, strict=True)
    ]
    attributions = pa.Table.from_pylist(
        [
            row
            for heatmaps, q in zip(found, single, strict=True)
            for row in attribution_rows(loaded.name, heatmaps, q["prompt"], q["image_id"])
        ],
        schema=ATTRIBUTION_ROWS,
    )
    ablated = ablation_effects(  # a row's images in one prompt, as it was asked
        loaded,
        [row[0] if len(row) == 1 else row for row in images],
        prompts,
        ids,
        chosen.ablation,
        datasets=[q["dataset"] for q in questions],
        answers=[q["expected"] for q in questions],
    )
    dataset_of = {image: q["dataset"] for q in questions for image in q["image_ids"]}
    tables = {
        "attention_maps": attention,
        "logit_lens": lens,
        "attributions": attributions,
        "patching_effects": patching_effects(loaded, wh, chosen.patching),
        "ablation_effects": ablated,
    }
    with_datasets = {
        table: rows if "dataset" in rows.column_names
        else _with_dataset(rows, [dataset_of.get(i) for i in rows.column("image_id").to_pylist()])
        for table, rows in tables.items()
    }  # fmt: skip
    return with_datasets, found[0] if found else []


def render(
    loaded: LoadedModel,
    tables: dict[str, pa.Table],
    heatmaps: list[Attribution],
    questions: list[dict[str, Any]],
    out: Path,
) -> dict[str, list[Path]]:
    """The pictures the UI shows: the first question's attention overlay per layer and its
    heatmaps, and curves by layer."""
    pictures: dict[str, list[Path]] = {}
    single = [q for q in questions if len(q["image_ids"]) == 1]
    if not single:  # overlays are drawn over one image
        return pictures
    first = single[0]
    image = load_image(first["path"]).image
    box = frame_box(getattr(loaded.processor, "image_processor", None), image.width, image.height)
    attention = tables["attention_maps"]
    for layer in dict.fromkeys(attention.column("layer").to_pylist()):
        grid = head_mean_map(attention, layer, first["image_id"], first["prompt"])
        if grid.ndim == 2:  # tiles without a patch grid have no picture
            pictures.setdefault("attention_maps", []).append(
                render_attention_overlay(
                    image, grid, out / "attention" / f"{layer}.png", box=box,
                    title=f"{loaded.name}: {short_layer(layer)}, mean over heads",
                )
            )  # fmt: skip
    drawn = render_attributions(image, heatmaps, out / "attributions.png", title=loaded.name)
    if drawn:
        pictures["attributions"] = [drawn]
    curves = {
        "logit_lens": ("label_prob", "dataset", "the label's probability by layer", "p(label)"),
        "patching_effects": ("recovery", "positions", "answer logit recovered by patching",
                             "recovery"),
        "ablation_effects": ("logit_change", "mode", "answer logit change when heads are ablated",
                             "logit change"),
    }  # fmt: skip
    for table, (value, series, title, ylabel) in curves.items():
        drawn = layer_curves(
            tables[table].to_pylist(), value, series, f"{loaded.name}: {title}", ylabel,
            out / f"{table}.png", unit_range=table == "logit_lens",
        )  # fmt: skip
        if drawn:
            pictures[table] = [drawn]
    return pictures
