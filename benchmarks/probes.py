"""Probing at scale: 24 layers x 4 concepts x 2 poolings over 2,000 images at 1,024 dimensions.

The claim under test: `probe_layers` (linear probe, 5-fold CV, Hewitt & Liang control task,
shuffled control, z-test and a 100-permutation test) finishes within a few minutes on 2 cores.

Synthetic activations go into a real DuckLake warehouse in a temporary folder, inserted through
DuckDB from Arrow as the extraction does. Each concept is planted along random class directions
with a strength that rises and falls with depth (a bump peaking at a known layer); one concept,
`material`, is never planted, so its rows show what "not encoded" looks like (selectivity near
0, p-values spread over [0, 1]). Timings: the insert, one pass of `load_vectors` over every
(layer, pooling) (MB/s of float32 read back), and `probe_layers` end to end (its own loading
included).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import scipy
import sklearn
from lens_assets.resources.warehouse import Warehouse

from lens_assets.analyses.probing import ProbeSettings, probe_layers
from lens_assets.analyses.reading import load_vectors
from lens_assets.data.rows import row_key

MODEL = "synthetic-vlm"
DATASET = "synthetic-clevr"
PROMPT = "Describe the image."
POOLINGS = ("mean_image", "last")
# concept -> (classes, depth at which it is most strongly encoded, peak strength); the last one
# is never encoded.
CONCEPTS: dict[str, tuple[int, float, float]] = {
    "colour": (8, 0.2, 4.0),
    "shape": (3, 0.5, 3.0),
    "count": (4, 0.8, 2.5),
    "material": (2, 0.5, 0.0),
}


@dataclass(frozen=True)
class Scale:
    layers: int
    concepts: int
    poolings: int
    images: int
    dim: int

    @property
    def probes(self) -> int:
        return self.layers * self.concepts * self.poolings


FULL = Scale(layers=24, concepts=4, poolings=2, images=2_000, dim=1_024)
QUICK = Scale(layers=4, concepts=2, poolings=1, images=400, dim=1_024)


def run(quick: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """Build, load, probe, and write `probes.json` and `probes.md` (`probes-quick.*` for the
    quick run) under `out_dir`."""
    scale = QUICK if quick else FULL
    settings = ProbeSettings(kinds=["linear"], n_jobs=_cores())
    concepts = dict(list(CONCEPTS.items())[: scale.concepts])
    if quick:  # keep the never-encoded control in the small run too
        concepts = {"colour": CONCEPTS["colour"], "material": CONCEPTS["material"]}
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="lens-bench-") as folder:
        warehouse = Warehouse.at(Path(folder) / "warehouse")
        started = time.perf_counter()
        stored_bytes = build_warehouse(warehouse, scale, concepts)
        insert_s = time.perf_counter() - started
        load_s = time_loading(warehouse, scale)
        started = time.perf_counter()
        rows = probe_layers(warehouse, MODEL, settings)
        probe_s = time.perf_counter() - started
    report = {
        "benchmark": "probes",
        "quick": quick,
        "scale": asdict(scale),
        "settings": settings.model_dump(),
        "machine": {**_machine(), "load_average_before": load_before},
        "timings": {
            "insert_s": round(insert_s, 2),
            "load_s": round(load_s, 2),
            "load_mb": round(stored_bytes / 1e6, 1),
            "load_mb_per_s": round(stored_bytes / 1e6 / load_s, 1),
            "probe_layers_s": round(probe_s, 2),
            "probes": len(rows),
            "s_per_probe": round(probe_s / max(len(rows), 1), 3),
        },
        "concepts": summarise(rows, concepts, scale),
        "rows": rows,
    }
    if out_dir is not None:  # a quick run never overwrites the full run's figures
        stem = "probes-quick" if quick else "probes"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(markdown(report))
    return {key: report[key] for key in ("scale", "timings", "concepts")}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _layer_names(scale: Scale) -> list[str]:
    return [f"model.language_model.layers.{i}" for i in range(scale.layers)]


def build_warehouse(
    warehouse: Warehouse, scale: Scale, concepts: dict[str, tuple[int, float, float]]
) -> int:
    """Insert labels and planted activations; returns the float32 bytes stored."""
    rng = np.random.default_rng(2019)
    image_ids = [hashlib.sha256(b"image-%d" % i).hexdigest()[:16] for i in range(scale.images)]
    values = {name: rng.integers(0, k, scale.images) for name, (k, _, _) in concepts.items()}
    directions = {
        name: _unit_rows(rng.normal(size=(k, scale.dim))) for name, (k, _, _) in concepts.items()
    }
    # one row per image, keyed as extraction keys it; probes read the rows' labels
    row_keys = [row_key([image_id], PROMPT) for image_id in image_ids]
    labels = pa.table(
        {
            "dataset": [DATASET] * (scale.images * len(concepts)),
            "row_key": row_keys * len(concepts),
            "concept": [name for name in concepts for _ in image_ids],
            "value": [f"{name}-{v}" for name in concepts for v in values[name]],
            "role": ["concept"] * (scale.images * len(concepts)),
        }
    )
    stored = 0
    with warehouse.connect() as con:
        con.execute("BEGIN")
        _insert(con, "row_labels", labels)
        for depth, layer in enumerate(_layer_names(scale)):
            position = depth / max(scale.layers - 1, 1)
            for pooling_index, pooling in enumerate(POOLINGS[: scale.poolings]):
                vectors = rng.standard_normal((scale.images, scale.dim), dtype=np.float32)
                for name, (_, peak, strength) in concepts.items():
                    weight = strength * np.exp(-(((position - peak) / 0.25) ** 2))
                    weight *= 0.6 if pooling_index else 1.0  # `last` sees the concept less
                    vectors += (weight * directions[name][values[name]]).astype(np.float32)
                _insert_activations(con, image_ids, row_keys, layer, pooling, vectors)
                stored += vectors.nbytes
        con.execute("COMMIT")
    return stored


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    con.register("incoming", rows)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
    con.unregister("incoming")


def _insert_activations(
    con: duckdb.DuckDBPyConnection,
    image_ids: list[str],
    row_keys: list[str],
    layer: str,
    pooling: str,
    vectors: np.ndarray,
) -> None:
    """Arrow FixedSizeList<float32> in, `FLOAT[]` stored (DuckLake has no fixed-size ARRAY)."""
    dim = vectors.shape[1]
    rows = pa.table(
        {
            "image_id": image_ids,
            "row_key": row_keys,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    )
    con.register("incoming", rows)
    con.execute(
        """
        INSERT INTO activations BY NAME  -- token_index, token_role, tile: NULL
        SELECT ? AS model, 'synthetic' AS architecture, ? AS dataset, image_id, row_key,
               [image_id] AS image_ids, ? AS prompt, ? AS layer, ? AS pooling, ? AS dim,
               vector::FLOAT[] AS vector
        FROM incoming
        """,
        [MODEL, DATASET, PROMPT, layer, pooling, dim],
    )
    con.unregister("incoming")


def time_loading(warehouse: Warehouse, scale: Scale) -> float:
    """Seconds to read every (layer, pooling) back as a matrix with `load_vectors`, through one
    read-only connection as `probe_layers` does."""
    with warehouse.connect(read_only=True) as con:
        started = time.perf_counter()
        for layer in _layer_names(scale):
            for pooling in POOLINGS[: scale.poolings]:
                _, X = load_vectors(con, MODEL, DATASET, layer, pooling)
                assert X.shape == (scale.images, scale.dim)
        return time.perf_counter() - started


def summarise(
    rows: list[dict[str, Any]], concepts: dict[str, tuple[int, float, float]], scale: Scale
) -> dict[str, dict[str, Any]]:
    """Per concept: where it was planted, where the probes found it, how often p < 0.05."""
    summary = {}
    for name, (classes, peak, strength) in concepts.items():
        mine = [r for r in rows if r["concept"] == name]
        best = max(mine, key=lambda r: r["selectivity"])
        summary[name] = {
            "classes": classes,
            "planted_peak_layer": round(peak * (scale.layers - 1)) if strength else None,
            "best_layer": best["layer"].rsplit(".", 1)[-1],
            "best_pooling": best["pooling"],
            "best_accuracy": round(best["accuracy"], 3),
            "best_selectivity": round(best["selectivity"], 3),
            "chance": round(1 / classes, 3),
            "share_p_below_0.05": round(float(np.mean([r["p_value"] < 0.05 for r in mine])), 3),
            "mean_selectivity": round(float(np.mean([r["selectivity"] for r in mine])), 3),
        }
    return summary


def markdown(report: dict[str, Any]) -> str:
    scale, timings, machine = report["scale"], report["timings"], report["machine"]
    lines = [
        f"# Probe benchmark{' (quick)' if report['quick'] else ''}",
        "",
        f"{scale['layers']} layers x {scale['concepts']} concepts x {scale['poolings']} "
        f"poolings = {timings['probes']} linear probes over {scale['images']:,} images at "
        f"{scale['dim']:,} dimensions; {report['settings']['folds']}-fold CV, control task, "
        f"shuffled control, z-test, {report['settings']['permutations']} permutations "
        f"(null: {report['settings']['null']}); {machine['cores']} cores "
        f"({machine['processor']}), n_jobs={report['settings']['n_jobs']}; load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after "
        "(other processes on the machine).",
        "",
        "| step | figure |",
        "| --- | --- |",
        f"| insert (DuckLake, Arrow) | {timings['insert_s']} s |",
        f"| load_vectors, every layer and pooling | {timings['load_s']} s for "
        f"{timings['load_mb']} MB ({timings['load_mb_per_s']} MB/s) |",
        f"| probe_layers end to end | {timings['probe_layers_s']} s "
        f"({timings['s_per_probe']} s per probe) |",
        "",
        "| concept | classes | planted peak | best layer (pooling) | accuracy | selectivity "
        "| chance | share p < 0.05 | mean selectivity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in report["concepts"].items():
        planted = "never" if c["planted_peak_layer"] is None else c["planted_peak_layer"]
        lines.append(
            f"| {name} | {c['classes']} | {planted} | {c['best_layer']} ({c['best_pooling']}) "
            f"| {c['best_accuracy']} | {c['best_selectivity']} | {c['chance']} "
            f"| {c['share_p_below_0.05']} | {c['mean_selectivity']} |"
        )
    return "\n".join(lines) + "\n"


def _load_average() -> float | None:
    """The 1-minute load average: other processes on the machine slow every timing here."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _machine() -> dict[str, Any]:
    return {
        "cores": _cores(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "duckdb": duckdb.__version__,
        "load_average_after": _load_average(),
    }
