"""The behaviour assets: each model's answers to its datasets' questions, scored."""

from dagster import AssetKey, MaterializeResult

from lens_assets.analyses.answers import ANSWER_ROWS, answer_questions
from lens_assets.analyses.behaviour import BehaviourNotSupported, require_generation
from lens_assets.orchestration.assets import DATASET_ROWS, IMAGES, PROMPTS
from lens_assets.orchestration.metadata import markdown_table
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.orchestration.sources import MODEL_CONFIG

ANSWERS = AssetKey("answers")
BEHAVIOUR_VERSION = "2"  # 2: each row asked with all its images


@per_model_asset(
    group="behaviour",
    deps=[MODEL_CONFIG, IMAGES, PROMPTS, DATASET_ROWS],
    code_version=BEHAVIOUR_VERSION,
    loads_model=True,
    description="Each model's greedy answer to every question of its datasets, normalised to "
    "the concept's vocabulary and scored (table `answers`; views answer_accuracy, "
    "answer_distribution, behaviour_vs_competence).",
)
def answers(step: ModelStep) -> MaterializeResult:
    name = step.name
    with step.warehouse.session() as wh, step.load(wh) as loaded:
        try:
            require_generation(loaded)
        except BehaviourNotSupported as reason:
            wh.replace_model_rows("answers", name, ANSWER_ROWS.empty_table())
            step.context.log.info(str(reason))
            return MaterializeResult(metadata={"rows": 0, "skipped": str(reason)})
        table = answer_questions(loaded, wh, step.datasets(), batch_size=step.batch_size)
        wh.replace_model_rows("answers", name, table)
        accuracy = wh.fetch_arrow(
            "SELECT dataset, concept, n, round(accuracy, 3) AS accuracy, "
            "round(unparsed, 3) AS unparsed FROM answer_accuracy WHERE model = ? ORDER BY ALL",
            [name],
        ).to_pylist()
    return MaterializeResult(
        metadata={"rows": table.num_rows, "accuracy": markdown_table(accuracy)}
    )
