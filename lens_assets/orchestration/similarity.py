"""Similarity analyses: CKA between layers and models, and the blind test."""

from dagster import AssetKey, MaterializeResult, MetadataValue

from lens_assets.analyses.blind import blind_test_rows
from lens_assets.analyses.layer_pairs import similarity_rows
from lens_assets.analyses.reports import cka_heatmap, dominance_by_layer
from lens_assets.analyses.stroop import concept_similarity_rows
from lens_assets.catalog import dataset_configs
from lens_assets.data.datasets import BlankDataset, load_dataset_config
from lens_assets.orchestration.assets import activations
from lens_assets.orchestration.behaviour import answers
from lens_assets.orchestration.metadata import markdown_table, picture_metadata
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.resources import schemas

LAYER_SIMILARITY = AssetKey("layer_similarity")
BLIND_TEST = AssetKey("blind_test")
CONCEPT_SIMILARITY = AssetKey("concept_similarity")
SIMILARITY_VERSION = "1"


@per_model_asset(
    group="analyses",
    deps=[activations],
    code_version=SIMILARITY_VERSION,
    description="Linear CKA (and its unbiased-HSIC variant) between every pair of this model's "
    "layers and between its layers and every other model's on the same images. A model's "
    "partition computes only the pairs that involve it (views closest_layers, "
    "layer_similarity_pairs).",
)
def layer_similarity(step: ModelStep) -> MaterializeResult:
    name = step.name
    with step.warehouse.session() as wh:
        rows = list(similarity_rows(wh, name))
        wh.replace_rows(
            "model_a = ? OR model_b = ?", [name, name],
            {"layer_similarity": schemas.rows_table(schemas.LAYER_SIMILARITY, rows)},
        )  # fmt: skip
        closest = wh.fetch_arrow(
            "SELECT layer, other_model, other_layer, round(cka, 4) AS cka FROM closest_layers "
            "WHERE model = ? AND rank = 1 ORDER BY ALL LIMIT 40",
            [name],
        ).to_pylist()
        others = sorted({r[side] for r in rows for side in ("model_a", "model_b")} - {name})
        pictures: dict[str, MetadataValue] = {}
        for other in [name, *others]:  # its own layers first, then one heat map per model pair
            drawn = cka_heatmap(rows, name, other, wh.root / "reports" / name / f"cka-{other}.png")
            key = "cka_layers" if other == name else f"cka_{other}"
            pictures |= picture_metadata(key, drawn, f"CKA {name} x {other}")
    return MaterializeResult(
        metadata={
            "pairs": len(rows),
            "other_models": MetadataValue.json(others),
            "closest_layers": markdown_table(closest),
            **pictures,
        }
    )


@per_model_asset(
    group="analyses",
    deps=[activations],
    code_version=SIMILARITY_VERSION,
    kinds={"scikitlearn"},
    description="The Stroop study per layer: PCA separation of word, font and background "
    "(tables concept_similarity, concept_dominance) and which cue wins when they disagree.",
)
def concept_similarity(step: ModelStep) -> MaterializeResult:
    name = step.name
    with step.warehouse.session() as wh:
        curves, shares = concept_similarity_rows(wh, name)
        wh.replace_rows(
            "model = ?", [name],
            {"concept_similarity": schemas.rows_table(schemas.CONCEPT_SIMILARITY, curves),
             "concept_dominance": schemas.rows_table(schemas.CONCEPT_DOMINANCE, shares)},
        )  # fmt: skip
        picture = dominance_by_layer(shares, name, wh.root / "reports" / name / "dominance.png")
    return MaterializeResult(
        metadata={
            "curve_rows": len(curves),
            "dominance_rows": len(shares),
            **picture_metadata("dominance_by_layer", picture, "cue dominance by layer"),
        }
    )


def blank_sources() -> dict[str, str]:
    """Each blank dataset config and the dataset whose questions it borrows."""
    found = {}
    for name, file in dataset_configs().items():
        config = load_dataset_config(file.path)
        if isinstance(config, BlankDataset):
            found[name] = config.of
    return found


@per_model_asset(
    group="analyses",
    deps=[answers],
    code_version=SIMILARITY_VERSION,
    description="The same questions on real and on blank images: accuracy on both and the "
    "total-variation distances real-vs-labels, blank-vs-labels, real-vs-blank (answer "
    "distributions: view answer_distribution).",
)
def blind_test(step: ModelStep) -> MaterializeResult:
    name = step.name
    with step.warehouse.session() as wh:
        rows = blind_test_rows(wh, name, blank_sources())
        wh.replace_model_rows("blind_test", name, schemas.rows_table(schemas.BLIND_TEST, rows))
    shown = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "model"}
        for r in rows
    ]
    return MaterializeResult(metadata={"rows": len(rows), "preview": markdown_table(shown)})
