"""Vision against VLM: visual tasks solved from every layer's features, beside the VLM's own
answer to the same multi-image question."""

from dagster import MaterializeResult, MetadataValue

from lens_assets.analyses.reports import vision_vs_vlm_by_layer
from lens_assets.analyses.vision_vs_vlm import vision_vs_vlm_table
from lens_assets.orchestration.assets import DATASET_ROWS, IMAGES, ROW_LABELS
from lens_assets.orchestration.metadata import markdown_table, picture_metadata
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.orchestration.sources import MODEL_CONFIG
from lens_assets.orchestration.tuning import TUNED_MODEL

VISION_VS_VLM_VERSION = "2"  # 2: items are dataset rows; the VLM is asked the row's question


@per_model_asset(
    group="analyses",
    deps=[MODEL_CONFIG, TUNED_MODEL, IMAGES, DATASET_ROWS, ROW_LABELS],
    code_version=VISION_VS_VLM_VERSION,
    loads_model=True,
    description="Correspondence, odd-one-out and art-style rows solved from the per-image patch "
    "features of every vision-tower block, projector and LLM layer, beside the VLM's own answer "
    "to the row's question asked with all its images in one prompt, and chance "
    "(table vision_vs_vlm_items, view vision_vs_vlm).",
)
def vision_vs_vlm(step: ModelStep) -> MaterializeResult:
    name = step.name
    with step.warehouse.session() as wh:
        with step.load(wh) as loaded:
            solved = vision_vs_vlm_table(
                loaded, wh, step.datasets(), step.config.prompt or "", step.batch_size
            )
        table = solved.table()
        wh.replace_model_rows("vision_vs_vlm_items", name, table)
        summary = wh.fetch_arrow(
            "SELECT dataset, task, stage, layer, layer_order, items, feature_accuracy, "
            "vlm_accuracy, chance FROM vision_vs_vlm WHERE model = ? "
            "ORDER BY dataset, task, layer_order",
            [name],
        ).to_pylist()
        picture = vision_vs_vlm_by_layer(
            summary, name, wh.root / "reports" / name / "vision_vs_vlm.png"
        )
    shown = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
         if k != "layer_order"}
        for row in summary
    ]  # fmt: skip
    step.context.log.info(f"{name}: {table.num_rows} item solutions")
    for reason in solved.skipped:
        step.context.log.info(f"{name}: {reason}")
    return MaterializeResult(
        metadata={
            "rows": table.num_rows,
            "by_layer": markdown_table(shown),
            "vlm_not_asked": MetadataValue.json(solved.skipped),
            **picture_metadata("accuracy_by_layer", picture, "accuracy by layer"),
        }
    )
