"""Vision against VLM: visual tasks solved from every layer's features, beside the answers."""

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from lens_assets.analyses.reports import vision_vs_vlm_by_layer
from lens_assets.analyses.vision_vs_vlm import vision_vs_vlm_table
from lens_assets.orchestration.assets import IMAGE_LABELS, IMAGES, datasets_of, model_config_of
from lens_assets.orchestration.behaviour import answers
from lens_assets.orchestration.metadata import markdown_image, markdown_table
from lens_assets.orchestration.partitions import MODELS
from lens_assets.orchestration.sources import MODEL_CONFIG
from lens_assets.resources.configurable import VLMRuntimeResource, WarehouseResource

VISION_VS_VLM_VERSION = "1"


@asset(
    partitions_def=MODELS,
    deps=[MODEL_CONFIG, IMAGES, IMAGE_LABELS, answers],
    group_name="analyses",
    code_version=VISION_VS_VLM_VERSION,
    automation_condition=AutomationCondition.eager(),
    kinds={"pytorch", "duckdb"},
    description="Correspondence and odd-one-out items solved from the patch features of every "
    "vision-tower block, projector and LLM layer, beside the model's own answer and chance "
    "(table vision_vs_vlm_items, view vision_vs_vlm).",
)
def vision_vs_vlm(
    context: AssetExecutionContext,
    runtime: VLMRuntimeResource,
    warehouse: WarehouseResource,
) -> MaterializeResult:
    name = context.partition_key
    config = model_config_of(name)
    with warehouse.session() as wh:
        with runtime.model(config, name, wh) as loaded:
            table = vision_vs_vlm_table(
                loaded, wh, datasets_of(config.datasets, name), config.prompt or "",
                runtime.effective_batch_size(config),
            )  # fmt: skip
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
    metadata: dict[str, object] = {"rows": table.num_rows, "by_layer": markdown_table(shown)}
    if picture is not None:
        metadata["accuracy_by_layer"] = markdown_image(picture, "accuracy by layer")
        metadata["accuracy_by_layer_path"] = MetadataValue.path(str(picture))
    context.log.info(f"{name}: {table.num_rows} item solutions")
    return MaterializeResult(metadata=metadata)
