"""Vision against VLM: visual tasks solved from every layer's features, beside the answers."""

from dagster import MaterializeResult

from lens_assets.analyses.reports import vision_vs_vlm_by_layer
from lens_assets.analyses.vision_vs_vlm import vision_vs_vlm_table
from lens_assets.orchestration.assets import IMAGE_LABELS, IMAGES
from lens_assets.orchestration.behaviour import answers
from lens_assets.orchestration.metadata import markdown_table, picture_metadata
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.orchestration.sources import MODEL_CONFIG

VISION_VS_VLM_VERSION = "1"


@per_model_asset(
    group="analyses",
    deps=[MODEL_CONFIG, IMAGES, IMAGE_LABELS, answers],
    code_version=VISION_VS_VLM_VERSION,
    loads_model=True,
    description="Correspondence and odd-one-out items solved from the patch features of every "
    "vision-tower block, projector and LLM layer, beside the model's own answer and chance "
    "(table vision_vs_vlm_items, view vision_vs_vlm).",
)
def vision_vs_vlm(step: ModelStep) -> MaterializeResult:
    name = step.name
    with step.warehouse.session() as wh:
        with step.load(wh) as loaded:
            table = vision_vs_vlm_table(
                loaded, wh, step.datasets(), step.config.prompt or "", step.batch_size
            )
        wh.replace_model_rows("vision_vs_vlm_items", name, table)
        summary = wh.fetch_arrow(
            "SELECT dataset, task, stage, layer, layer_order, items, feature_accuracy, "
            "vlm_accuracy, chance FROM vision_vs_vlm WHERE model = ? ORDER BY dataset, "
            "layer_order",
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
    return MaterializeResult(
        metadata={
            "rows": table.num_rows,
            "by_layer": markdown_table(shown),
            **picture_metadata("accuracy_by_layer", picture, "accuracy by layer"),
        }
    )
