"""The behaviour assets: each model's answers to its datasets' questions, scored, and those
answers set beside what its layers encode."""

from dagster import AssetKey, MaterializeResult

from lens_assets.analyses.answers import ANSWER_ROWS, answer_questions
from lens_assets.analyses.behaviour import BehaviourNotSupported, require_generation
from lens_assets.analyses.reports import behaviour_gap
from lens_assets.orchestration.assets import DATASET_ROWS, IMAGES, PROMPTS
from lens_assets.orchestration.metadata import markdown_table, picture_metadata
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.orchestration.probes import PROBE_RESULTS
from lens_assets.orchestration.sources import MODEL_CONFIG
from lens_assets.orchestration.tuning import TUNED_MODEL

ANSWERS = AssetKey("answers")
BEHAVIOUR_VERSION = "2"  # 2: each row asked with all its images


@per_model_asset(
    group="behaviour",
    deps=[MODEL_CONFIG, TUNED_MODEL, IMAGES, PROMPTS, DATASET_ROWS],
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


@per_model_asset(
    group="behaviour",
    deps=[answers, PROBE_RESULTS],
    code_version="1",
    description="The model's answer accuracy per concept beside its best layer's probe "
    "accuracy, and the gap between them: where it knows more than it says (view "
    "behaviour_vs_competence, picture behaviour_gap).",
)
def behaviour_vs_competence(step: ModelStep) -> MaterializeResult:
    name = step.name
    with step.warehouse.session() as wh:
        rows = wh.fetch_arrow(
            "SELECT * FROM behaviour_vs_competence WHERE model = ? "
            "ORDER BY competence_gap DESC, dataset, concept",
            [name],
        ).to_pylist()
        picture = behaviour_gap(rows, name, wh.root / "reports" / name / "behaviour_gap.png")
    shown = [
        {"dataset": r["dataset"], "concept": r["concept"],
         "answers": f"{r['answer_accuracy']:.3f}", "probe": f"{r['probe_accuracy']:.3f}",
         "gap": f"{r['competence_gap']:+.3f}", "peak layer": r["peak_layer"]}
        for r in rows[:15]
    ]  # fmt: skip
    return MaterializeResult(
        metadata={
            "concepts": len(rows),
            "largest_gaps": markdown_table(shown),
            **picture_metadata("behaviour_gap", picture, "answers against what the layers encode"),
        }
    )
