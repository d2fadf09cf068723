"""The probe_results asset: per model, does each layer encode each labelled concept?

`configs/probing.yaml` chooses the protocol: 'cv' (cross-validated probes with a control task,
`probing.probe_layers`) or 'vlm-lens' (VLM-Lens's held-out protocol, `vlm_lens_probe`), which
also keeps each trained probe as a safetensors file and each held-out row's prediction."""

import shutil
from typing import Any

from dagster import AssetKey, MaterializeResult, MetadataValue
from pydantic import ValidationError

from lens_assets.analyses.probing import ProbeSettings, probe_layers
from lens_assets.analyses.reports import probe_curves, selectivity_heatmap
from lens_assets.analyses.vlm_lens_probe import (
    PROBES_DIR,
    model_probes,
    vlm_lens_probe_layers,
)
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


def cross_validated_row(row: dict[str, Any]) -> dict[str, Any]:
    """A `probe_layers` row as a probe_results row: protocol 'cv', its one-sided z-test's
    two-sided p (2 min(p, 1 - p) of the same z), nothing held out, no saved probe."""
    p = row["z_p_value"]
    return {
        **row,
        "protocol": "cv",
        "z_p_two_sided": None if p is None else 2 * min(p, 1 - p),
        "n_test": None,
        "hyperparameters": None,
        "probe_file": None,
    }


@per_model_asset(
    group="analyses",
    deps=[activations, IMAGE_LABELS],
    # The probing settings are part of the code: editing probing.yaml makes every model stale.
    code_version=f"2-{settings_version('probing.yaml')}",
    kinds={"scikitlearn"},
    description="Probes per (dataset, layer, pooling, concept), by the protocol probing.yaml "
    "names: 'cv' (k-fold CV with a control task, a shuffled-label control, a permutation test "
    "and a z-test) or 'vlm-lens' (VLM-Lens's held-out split, grid chosen by CV on the training "
    "split, shuffled control, two-sided z-test; probes kept under <warehouse>/probes/ and each "
    "held-out row's prediction in probe_predictions). Tables probe_results, probe_predictions.",
)
def probe_results(step: ModelStep) -> MaterializeResult:
    name = step.name
    settings, datasets, concepts = probing_config()
    with step.warehouse.session() as wh:
        if settings.protocol == "vlm-lens":
            found = vlm_lens_probe_layers(wh, name, settings, datasets or None, concepts or None)
            rows, predictions = found.results, found.predictions
        else:
            scanned = probe_layers(wh, name, settings, datasets or None, concepts or None)
            rows, predictions = [cross_validated_row(r) for r in scanned], []
            shutil.rmtree(model_probes(wh.root / PROBES_DIR, name), ignore_errors=True)
        report = wh.root / "reports" / name
        curves = probe_curves(rows, name, report / "probe_curves.png")
        heat_map = selectivity_heatmap(rows, name, report / "selectivity.png")
        wh.replace_rows(
            "model = ?",
            [name],
            {
                "probe_results": schemas.rows_table(schemas.PROBE_RESULTS_TABLE, rows),
                "probe_predictions": schemas.rows_table(schemas.PROBE_PREDICTIONS, predictions),
            },
        )
    return MaterializeResult(
        metadata={
            "protocol": settings.protocol,
            "rows": len(rows),
            "predictions": len(predictions),
            **_best(rows, settings.protocol),
            **picture_metadata("probe_curves", curves, "probe curves"),
            **picture_metadata("selectivity", heat_map, "selectivity by layer and concept"),
        }
    )


def _best(rows: list[dict[str, Any]], protocol: str) -> dict[str, MetadataValue]:
    """The ten most selective probes (cv), or the ten furthest above their shuffled control on
    the held-out split (vlm-lens)."""
    if protocol == "vlm-lens":
        best = sorted(rows, key=lambda r: r["shuffled_accuracy"] - r["accuracy"])[:10]
        shown = [
            {"dataset": r["dataset"], "layer": r["layer"], "pooling": r["pooling"],
             "concept": r["concept"], "probe": r["probe"],
             "held-out accuracy": f"{r['accuracy']:.3f}",
             "shuffled": f"{r['shuffled_accuracy']:.3f}",
             "p (two-sided)": f"{r['z_p_two_sided']:.3g}"}
            for r in best
        ]  # fmt: skip
        return {"furthest_above_shuffled": markdown_table(shown)}
    best = sorted(rows, key=lambda r: -r["selectivity"])[:10]
    shown = [
        {"dataset": r["dataset"], "layer": r["layer"], "pooling": r["pooling"],
         "concept": r["concept"], "accuracy": f"{r['accuracy']:.3f}",
         "control": f"{r['control_accuracy']:.3f}", "p": f"{r['p_value']:.3g}"}
        for r in best
    ]  # fmt: skip
    return {"most_selective": markdown_table(shown)}
