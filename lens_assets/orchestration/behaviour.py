"""The behaviour assets: each model's answers to its datasets' questions, scored."""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    MaterializeResult,
    asset,
)

from lens_assets.analyses.answers import ANSWER_ROWS, answer_questions
from lens_assets.analyses.behaviour import BehaviourNotSupported, require_generation
from lens_assets.orchestration.assets import IMAGES, PROMPTS, datasets_of, model_config_of
from lens_assets.orchestration.metadata import markdown_table
from lens_assets.orchestration.partitions import MODELS
from lens_assets.orchestration.sources import MODEL_CONFIG
from lens_assets.resources.configurable import VLMRuntimeResource, WarehouseResource

ANSWERS = AssetKey("answers")
BEHAVIOUR_VERSION = "1"


@asset(
    partitions_def=MODELS,
    deps=[MODEL_CONFIG, IMAGES, PROMPTS],
    group_name="behaviour",
    code_version=BEHAVIOUR_VERSION,
    automation_condition=AutomationCondition.eager(),
    kinds={"pytorch", "duckdb"},
    description="Each model's greedy answer to every question of its datasets, normalised to "
    "the concept's vocabulary and scored (table `answers`; views answer_accuracy, "
    "answer_distribution, behaviour_vs_competence).",
)
def answers(
    context: AssetExecutionContext,
    runtime: VLMRuntimeResource,
    warehouse: WarehouseResource,
) -> MaterializeResult:
    name = context.partition_key
    config = model_config_of(name)
    with warehouse.session() as wh, runtime.model(config, name, wh) as loaded:
        try:
            require_generation(loaded)
        except BehaviourNotSupported as reason:
            wh.replace_model_rows("answers", name, ANSWER_ROWS.empty_table())
            context.log.info(str(reason))
            return MaterializeResult(metadata={"rows": 0, "skipped": str(reason)})
        table = answer_questions(
            loaded, wh, datasets_of(config.datasets, name),
            batch_size=runtime.effective_batch_size(config),
        )  # fmt: skip
        wh.replace_model_rows("answers", name, table)
        accuracy = wh.fetch_arrow(
            "SELECT dataset, concept, n, round(accuracy, 3) AS accuracy, "
            "round(unparsed, 3) AS unparsed FROM answer_accuracy WHERE model = ? ORDER BY ALL",
            [name],
        ).to_pylist()
    return MaterializeResult(
        metadata={"rows": table.num_rows, "accuracy": markdown_table(accuracy)}
    )
