"""The probe_results asset: per model, does each layer encode each labelled concept?"""

from dagster import AssetKey, MaterializeResult
from pydantic import ValidationError

from lens_assets.analyses.probing import ProbeSettings, probe_layers
from lens_assets.analyses.reports import probe_curves
from lens_assets.catalog import settings_version
from lens_assets.config import ConfigError, configs_dir, read_yaml
from lens_assets.orchestration.assets import IMAGE_LABELS, activations
from lens_assets.orchestration.metadata import markdown_table, picture_metadata
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.resources import schemas

PROBE_RESULTS = AssetKey("probe_results")


def probing_config() -> tuple[ProbeSettings, list[str], list[str]]:
    """`configs/probing.yaml`: probe settings plus which datasets and concepts (empty: all)."""
    path = configs_dir() / "probing.yaml"
    data = (read_yaml(path, "probing config") if path.is_file() else None) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid probing config {path}: expected a mapping of settings")
    datasets, concepts = data.pop("datasets", None) or [], data.pop("concepts", None) or []
    try:
        return ProbeSettings(**data), list(datasets), list(concepts)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid probing config {path}: {problems}") from None


@per_model_asset(
    group="analyses",
    deps=[activations, IMAGE_LABELS],
    # The probing settings are part of the code: editing probing.yaml makes every model stale.
    code_version=f"1-{settings_version('probing.yaml')}",
    kinds={"scikitlearn"},
    description="Linear (and MLP) probes per (dataset, layer, pooling, concept) with a control "
    "task, a shuffled-label control, a permutation test and a z-test (table probe_results).",
)
def probe_results(step: ModelStep) -> MaterializeResult:
    name = step.name
    settings, datasets, concepts = probing_config()
    with step.warehouse.session() as wh:
        rows = probe_layers(wh, name, settings, datasets or None, concepts or None)
        wh.replace_model_rows(
            "probe_results", name, schemas.rows_table(schemas.PROBE_RESULTS, rows)
        )
        picture = probe_curves(rows, name, wh.root / "reports" / name / "probe_curves.png")
    best = sorted(rows, key=lambda r: -r["selectivity"])[:10]
    shown = [
        {"dataset": r["dataset"], "layer": r["layer"], "pooling": r["pooling"],
         "concept": r["concept"], "accuracy": f"{r['accuracy']:.3f}",
         "control": f"{r['control_accuracy']:.3f}", "p": f"{r['p_value']:.3g}"}
        for r in best
    ]  # fmt: skip
    return MaterializeResult(
        metadata={
            "rows": len(rows),
            "most_selective": markdown_table(shown),
            **picture_metadata("probe_curves", picture, "probe curves"),
        }
    )
