"""The concept_pca asset: VLM-Lens's concept workflow per model, beside the Stroop study
(`concept_similarity`): items against the centroids of a concept image set, in its PCA space."""

from dagster import AssetKey, MaterializeResult, MetadataValue
from pydantic import ValidationError

from lens_assets.analyses.concept_pca import ConceptSettings, concept_pca_rows
from lens_assets.analyses.concept_plots import concept_curves, concept_scatter
from lens_assets.catalog import dataset_configs, settings_version
from lens_assets.config import ConfigError, configs_dir, read_yaml
from lens_assets.orchestration.assets import IMAGE_LABELS, activations
from lens_assets.orchestration.metadata import markdown_table, picture_metadata
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.resources import schemas

CONCEPT_PCA = AssetKey("concept_pca")
SETTINGS_FILE = "concepts.yaml"


def concepts_config() -> ConceptSettings | None:
    """`configs/concepts.yaml`, checked against the dataset configs; None when there is none
    (the asset then has nothing to compare)."""
    path = configs_dir() / SETTINGS_FILE
    data = read_yaml(path, "concepts config") if path.is_file() else None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid concepts config {path}: expected a mapping of settings")
    try:
        settings = ConceptSettings(**data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid concepts config {path}: {problems}") from None
    known = dataset_configs()
    unknown = [d for d in [settings.concept_set, *settings.targets] if d not in known]
    if unknown:
        raise ConfigError(
            f"invalid concepts config {path}: datasets {unknown} have no config under "
            f"configs/datasets/ (known: {', '.join(sorted(known)) or 'none'})"
        )
    return settings


@per_model_asset(
    group="analyses",
    deps=[activations, IMAGE_LABELS],
    # The settings are part of the code: editing concepts.yaml makes every model stale.
    code_version=f"1-{settings_version(SETTINGS_FILE)}",
    kinds={"scikitlearn"},
    description="VLM-Lens's concept workflow (configs/concepts.yaml): PCA fitted on a concept "
    "image set per layer and pooling; each item's cosine to each concept centroid as the "
    "components grow from 1 to 50, weighted k-NN over the concept items, and the 2-D scatter "
    "of the first two components (tables concept_pca, concept_pca_layers).",
)
def concept_pca(step: ModelStep) -> MaterializeResult:
    name = step.name
    settings = concepts_config()
    if settings is None:
        with step.warehouse.session() as wh:
            wh.replace_rows("model = ?", [name], _tables([], []))
        return MaterializeResult(
            metadata={"note": f"no configs/{SETTINGS_FILE}: no concept set to compare with"}
        )
    with step.warehouse.session() as wh:
        found = concept_pca_rows(wh, name, settings)
        wh.replace_rows("model = ?", [name], _tables(found.items, found.layers))
        reports = wh.root / "reports" / name
        curves = concept_curves(found.layers, name, reports / "concept_pca_curves.png")
        scatter = concept_scatter(found.scatters, name, reports / "concept_pca_scatter.png")
    return MaterializeResult(
        metadata={
            "item_rows": len(found.items),
            "layer_rows": len(found.layers),
            "best_layers": markdown_table(_best(found.layers)),
            "skipped": MetadataValue.json(found.skipped),
            **picture_metadata("concept_curves", curves, "items against the concept centroids"),
            **picture_metadata("concept_scatter", scatter, "first two components"),
        }
    )


def _tables(items: list[dict], layers: list[dict]) -> dict:
    return {
        "concept_pca": schemas.rows_table(schemas.CONCEPT_PCA, items),
        "concept_pca_layers": schemas.rows_table(schemas.CONCEPT_PCA_LAYERS, layers),
    }


def _best(rows: list[dict]) -> list[dict]:
    """Per (dataset, layer, pooling), the components where items are most often nearest their
    own centroid: the ten best."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["centroid_accuracy"] is None:
            continue
        key = (r["dataset"], r["layer"], r["pooling"])
        if key not in best or r["centroid_accuracy"] > best[key]["centroid_accuracy"]:
            best[key] = r
    ranked = sorted(best.values(), key=lambda r: (-r["centroid_accuracy"], -r["knn_accuracy"]))
    return [
        {"dataset": r["dataset"], "layer": r["layer"], "pooling": r["pooling"],
         "components": r["components"], "centroid_acc": f"{r['centroid_accuracy']:.3f}",
         "knn_acc": f"{r['knn_accuracy']:.3f}"}
        for r in ranked[:10]
    ]  # fmt: skip
