"""Read-back against the limit, a plain `.npy` file of the same floats, measured side by side.

One layer's pooled vectors (10,000 x 768 float32, 30.7 MB; `--quick`: 2,000) are written
through the real write path (stage, `replace_partition`) into a warehouse that also holds a
second model's partition and three more layers of the same model, so a read must find its
files and row groups. Then, in interleaved rounds (the median of each is reported):
- the limit: `np.load` of the same matrix from a `.npy` file;
- the fast path (`resources.reads`, what `load_vectors` and so every analysis uses) on the
  process's open read-only handle: the layer read again; a layer not read before (the
  lake's file list and footers known, its pages not); and with nothing kept but the handle;
- the SQL route on the same handle (DuckDB reads the rows, Arrow makes the matrix);
- the old route: `Warehouse.fetch_arrow` (a new connection, so an attach, per read), as
  `load_vectors` read before;
- `lens sql`'s route to Arrow (`Warehouse.fetch_arrow`) for the plain projection
  `SELECT row_key, vector FROM activations WHERE model = ? AND dataset = ? AND layer = ?
  AND pooling = ?`, which takes the fast path, into Arrow and on into numpy.
And the fixed costs: the first read in a process (the attach), a read on the open path, and
the first read after another process committed a new snapshot (the file list asked again).
Every route's rows are checked against the `.npy` matrix.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lens_assets.resources import reads
from lens_assets.resources.staging import ActivationStage
from lens_assets.resources.warehouse import Warehouse

from benchmarks.probes import _load_average, _machine

MODEL, DATASET, LAYER, POOLING = "reading", "bench", "model.language_model.layers.11", "last"
OTHER_LAYERS = ("model.language_model.layers.5", "model.vision_tower.encoder.layers.3")
PROJECTION = (
    "SELECT row_key, vector FROM activations "
    "WHERE model = ? AND dataset = ? AND layer = ? AND pooling = ?"
)


def row_key(image_id: str) -> str:
    """As extraction keys a one-image row with no prompt of its own (lens_assets.data.rows)."""
    return hashlib.sha256((image_id + chr(30)).encode()).hexdigest()[:16]


def staged_rows(vectors: np.ndarray, layer: str, pooling: str) -> pa.Table:
    """A layer's pooled rows as extraction stages them."""
    count, dim = vectors.shape
    image_ids = [f"img-{i:05d}" for i in range(count)]
    return pa.table(
        {
            "dataset": [DATASET] * count,
            "image_id": image_ids,
            "prompt": ["What colour is the shape in this image?"] * count,
            "layer": [layer] * count,
            "pooling": [pooling] * count,
            "token_index": pa.nulls(count, pa.int32()),
            "token_role": pa.nulls(count, pa.string()),
            "tile": pa.nulls(count, pa.int32()),
            "dim": pa.array([dim] * count, pa.int32()),
            "vector": pa.ListArray.from_arrays(
                pa.array(np.arange(0, vectors.size + 1, dim, dtype=np.int32)),
                pa.array(vectors.reshape(-1)),
            ),
            "row_key": [row_key(i) for i in image_ids],
            "image_ids": [[i] for i in image_ids],
            "image_index": pa.nulls(count, pa.int32()),
        }
    )


def store(warehouse: Warehouse, model: str, layers: dict[tuple[str, str], np.ndarray]) -> None:
    """Replace a model's partition with these layers' rows, through the write path extraction
    takes (a stage that knows its model writes the lake's data file itself)."""
    with ActivationStage(warehouse.location.staging_dir, model, "synthetic") as stage:
        for (layer, pooling), vectors in layers.items():
            stage.add_activations(staged_rows(vectors, layer, pooling))
        stage.close()
        warehouse.replace_partition(stage.path, model, "synthetic", None, [])


def sorted_by_key(vectors: np.ndarray) -> np.ndarray:
    """The matrix in the order every route returns it: by row key."""
    keys = [row_key(f"img-{i:05d}") for i in range(len(vectors))]
    return vectors[np.argsort(np.array(keys))]


def first_read(warehouse: Warehouse, selection: reads.Selection) -> np.ndarray:
    """The fast path on the open handle for a layer not read before: the lake's file list and
    footers are known (another layer was read), its pages' layout and mapping are not."""
    reads.clear_caches(pages_only=True)
    return reads.read_vectors(warehouse, selection).matrix


def cold_read(warehouse: Warehouse, selection: reads.Selection) -> np.ndarray:
    """The fast path on the open handle with nothing kept from earlier reads: the file list
    asked of the lake, every footer read, the pages parsed and mapped."""
    reads.clear_caches()
    return reads.read_vectors(warehouse, selection).matrix


def old_route(warehouse: Warehouse, params: list[str]) -> np.ndarray:
    """As `load_vectors` read before: a new read-only connection (an attach) per read, the
    rows through DuckDB, the matrix through Arrow."""
    with warehouse.connect(read_only=True) as con:
        table = con.execute(PROJECTION + " ORDER BY row_key", params).to_arrow_table()
    return reads.list_column_to_matrix(table.column("vector"), "old route")


def layout(warehouse: Warehouse, model: str) -> dict[str, Any]:
    """How the write path laid the model's vectors out: what the read's speed depends on."""
    files = (
        warehouse.fetch_arrow("SELECT data_file FROM ducklake_list_files('lake', 'activations')")
        .column(0)
        .to_pylist()
    )
    found: dict[str, Any] = {"files": 0, "row_groups": 0, "rows": 0, "vector_compression": set()}
    for path in files:
        metadata = pq.read_metadata(path)
        group = metadata.row_group(0)
        names = [group.column(i).path_in_schema for i in range(group.num_columns)]
        if model not in str(group.column(names.index("model")).statistics):
            continue
        found["files"] += 1
        found["row_groups"] += metadata.num_row_groups
        found["rows"] += metadata.num_rows
        leaf = next(i for i, name in enumerate(names) if name.startswith("vector."))
        found["vector_compression"].add(group.column(leaf).compression)
    found["vector_compression"] = sorted(found["vector_compression"])
    return found


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def run(quick: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    load_before = _load_average()
    count, dim = (2_000 if quick else 10_000), 768
    rounds = 5 if quick else 15
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    expected = sorted_by_key(vectors)
    megabytes = vectors.nbytes / 1e6
    with tempfile.TemporaryDirectory(prefix="lens-bench-readback-") as folder:
        root = Path(folder)
        np.save(root / "layer.npy", expected)
        warehouse = Warehouse.at(root / "warehouse")
        layers = {(LAYER, POOLING): vectors}
        for other in OTHER_LAYERS:
            layers[(other, POOLING)] = rng.normal(size=(count, dim)).astype(np.float32)
        layers[(LAYER, "mean_image")] = rng.normal(size=(count, dim)).astype(np.float32)
        store(warehouse, MODEL, layers)
        store(warehouse, "other", {(LAYER, POOLING): rng.normal(size=(count, dim)).astype("f4")})
        selection = reads.Selection(MODEL, DATASET, LAYER, POOLING)
        params = [MODEL, DATASET, LAYER, POOLING]
        stored = layout(warehouse, MODEL)

        reads.close_readers()
        first_s, first = _timed(lambda: reads.read_vectors(warehouse, selection))
        routes: dict[str, Callable[[], np.ndarray]] = {
            "npy": lambda: np.load(root / "layer.npy"),
            "fast": lambda: reads.read_vectors(warehouse, selection).matrix,
            "fast_first_read": lambda: first_read(warehouse, selection),
            "fast_cold": lambda: cold_read(warehouse, selection),
            "sql_open_handle": lambda: reads.read_vectors(warehouse, selection, fast=False).matrix,
            "old_route": lambda: old_route(warehouse, params),
            "lens_sql_arrow": lambda: warehouse.fetch_arrow(PROJECTION, params),
            "lens_sql_numpy": lambda: reads.list_column_to_matrix(
                warehouse.fetch_arrow(PROJECTION, params).column("vector"), "sql"
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in routes}
        correct: dict[str, bool] = {}
        for round_index in range(rounds):
            for name, work in routes.items():
                if name == "old_route" and round_index >= 5:
                    continue  # an attach per read: five rounds say enough
                seconds, result = _timed(work)
                times[name].append(seconds)
                if round_index == 0:
                    correct[name] = _same(result, expected)
        # a new snapshot committed since the last read: the file list is asked again
        store(warehouse, "other", {(LAYER, POOLING): rng.normal(size=(count, dim)).astype("f4")})
        after_commit_s, after_commit = _timed(lambda: reads.read_vectors(warehouse, selection))
        correct["first_read"] = first.route == "files" and _same(first.matrix, expected)
        correct["after_commit"] = after_commit.route == "files" and _same(
            after_commit.matrix, expected
        )

    limit = statistics.median(times["npy"])
    report: dict[str, Any] = {
        "benchmark": "readback",
        "quick": quick,
        "machine": {**_machine(), "load_average_before": load_before},
        "vectors": count,
        "dim": dim,
        "megabytes": megabytes,
        "rounds": rounds,
        "layout": stored,
        "routes": {
            name: {
                "seconds": statistics.median(seconds),
                "mb_per_s": megabytes / statistics.median(seconds),
                "ratio_to_npy": limit / statistics.median(seconds),
                "rounds": len(seconds),
                "same_rows_as_npy": correct[name],
            }
            for name, seconds in times.items()
        },
        "first_read_in_process_s": first_s,
        "read_after_a_commit_s": after_commit_s,
        "open_path_read_s": statistics.median(times["fast"]),
        "correct": correct,
        "targets": {
            "fast_mb_per_s_at_least_1000": megabytes / statistics.median(times["fast"]) >= 1000,
            "fast_first_read_mb_per_s_at_least_1000": megabytes
            / statistics.median(times["fast_first_read"])
            >= 1000,
            "open_path_read_under_0_1_s": statistics.median(times["fast"]) < 0.1,
        },
    }
    if out_dir is not None:
        stem = "readback-quick" if quick else "readback"
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(markdown(report))
    return {
        "fast_mb_per_s": round(report["routes"]["fast"]["mb_per_s"]),
        "npy_mb_per_s": round(report["routes"]["npy"]["mb_per_s"]),
        "fast_ratio_to_npy": round(report["routes"]["fast"]["ratio_to_npy"], 2),
        "fast_first_read_mb_per_s": round(report["routes"]["fast_first_read"]["mb_per_s"]),
        "open_path_read_s": round(report["open_path_read_s"], 4),
        "correct": all(correct.values()),
    }


def _same(result: Any, expected: np.ndarray) -> bool:
    if isinstance(result, pa.Table):  # the projection has no ORDER BY: compare by row key
        result = reads.list_column_to_matrix(result.sort_by("row_key").column("vector"), "check")
    return bool(result.shape == expected.shape and np.array_equal(result, expected))


NAMES = {
    "npy": "`.npy` file (`np.load`): the limit",
    "fast": "fast path (`load_vectors`, every analysis), open handle, the layer read again",
    "fast_first_read": "fast path, open handle, a layer not read before",
    "fast_cold": "fast path, open handle, nothing kept (file list asked, footers read)",
    "sql_open_handle": "SQL route on the same open handle",
    "old_route": "old route (`fetch_arrow` per read: attach + SQL + Arrow)",
    "lens_sql_arrow": "`lens sql` route, plain projection, to Arrow",
    "lens_sql_numpy": "`lens sql` route, plain projection, to numpy",
}


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# Read-back", "",
        f"One layer's pooled vectors, {report['vectors']:,} x {report['dim']} float32 "
        f"({report['megabytes']:.1f} MB), into a numpy matrix; median of interleaved rounds; "
        f"{machine['cores']} cores, load average {machine['load_average_before']} "
        f"before and {machine['load_average_after']} after. The partition read: "
        f"{report['layout']['rows']:,} rows in {report['layout']['files']} file(s), "
        f"{report['layout']['row_groups']} row group(s), vectors "
        f"{'/'.join(report['layout']['vector_compression'])}.", "",
        "| route | seconds | MB/s | ratio to `.npy` | same rows |",
        "|---|---:|---:|---:|---|",
    ]  # fmt: skip
    for name, route in report["routes"].items():
        lines.append(
            f"| {NAMES[name]} | {route['seconds']:.4f} | {route['mb_per_s']:.0f} | "
            f"{route['ratio_to_npy']:.2f} | {route['same_rows_as_npy']} |"
        )
    lines += [
        "",
        f"First read in a process (attach included): {report['first_read_in_process_s']:.3f} s. "
        f"A read on the open path: {report['open_path_read_s']:.4f} s. The first read after "
        f"another commit (the file list asked again): {report['read_after_a_commit_s']:.4f} s.",
        "",
        f"Targets: fast path at 1 GB/s or more: "
        f"{report['targets']['fast_mb_per_s_at_least_1000']} (a layer read again), "
        f"{report['targets']['fast_first_read_mb_per_s_at_least_1000']} (its first read); "
        "a read on an open path under "
        f"0.1 s: {report['targets']['open_path_read_under_0_1_s']}.",
        "",
    ]
    return "\n".join(lines)
