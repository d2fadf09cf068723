"""Partitions per minute with 1, 2 and 3 Celery workers, all writing one shared warehouse: the
DuckLake catalog in PostgreSQL and the data on S3 (moto), on loopback, as the scale-out test
sets them up. Every run materializes the same model partitions (tiny preset) from scratch;
wall time runs from launching the Dagster runs to the last one's end, so it includes each
run's own start (the `dagster asset materialize` process) and each step's model load.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.probes import _load_average, _machine
from tests.servers import (
    celery_workers,
    cluster_configs,
    cluster_env,
    lens_sql,
    materialize_partition,
    postgres,
    redis,
    s3,
)

ARCHITECTURES = {
    "llava": ["model.vision_tower.encoder.layers.0", "model.language_model.norm"],
    "qwen2-vl": ["model.visual.blocks.0", "model.language_model.norm"],
    "clip": ["vision_model.pre_layrnorm", "vision_model.encoder.layers.1"],
}
POOLINGS = ["mean_image", "last"]
WORKER_COUNTS = (1, 2, 3)


def cpu_times() -> tuple[float, float]:
    """Machine-wide (busy, total) CPU jiffies from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    copies, images = (1, 12) if quick else (2, 32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lens-scale-") as temp, ExitStack() as servers:
        tmp = Path(temp)
        pg = servers.enter_context(postgres())
        broker = servers.enter_context(redis(tmp))
        store = servers.enter_context(s3())
        models = {f"tiny-{architecture}-{copy}": (architecture, modules)
                  for architecture, modules in ARCHITECTURES.items()
                  for copy in range(copies)}  # fmt: skip
        names = list(models)
        cluster_configs(tmp / "configs", models, POOLINGS, images, batch_size=8)
        env = cluster_env(tmp, tmp / "configs", pg, broker, store)
        done = subprocess.run(["lens", "materialize", "--select", "images"], env=env,
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"images failed: {done.stderr[-2000:]}")
        n_images = lens_sql(env, "SELECT count(DISTINCT image_id) AS n FROM images")[0]["n"]
        for workers in WORKER_COUNTS:
            logs = tmp / f"logs-{workers}"
            with celery_workers(env, workers, logs):
                busy, total = cpu_times()
                start = time.perf_counter()
                runs = [materialize_partition(env, n, logs / f"{n}.log") for n in names]
                codes = [r.wait(timeout=1800) for r in runs]
                seconds = time.perf_counter() - start
                busy_after, total_after = cpu_times()
            utilisation = (busy_after - busy) / (total_after - total)
            if any(codes):
                raise RuntimeError(f"a run failed with {workers} workers: see {logs}")
            counts = lens_sql(env, "SELECT model, count(*) AS n FROM activations GROUP BY ALL")
            expected = n_images * 2 * len(POOLINGS)
            assert {r["model"]: r["n"] for r in counts} == dict.fromkeys(names, expected)
            rows.append({"workers": workers, "partitions": len(names),
                         "seconds": round(seconds, 1),
                         "partitions_per_minute": round(len(names) / seconds * 60, 2),
                         "cpu_busy": round(utilisation, 2)})  # fmt: skip
    base = rows[0]["partitions_per_minute"]
    for row in rows:
        row["speedup"] = round(row["partitions_per_minute"] / base, 2)
    result = {"machine": _machine(), "load_average": _load_average(), "images": n_images,
              "hook_points": 2, "poolings": POOLINGS, "runs": rows}  # fmt: skip
    suffix = "-quick" if quick else ""
    (out_dir / f"scale_out{suffix}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Scale-out: {len(names)} tiny partitions ({n_images} images x 2 hook points x "
        f"{len(POOLINGS)} poolings each) by 1 to 3 Celery workers",
        "",
        "| workers | partitions | seconds | partitions/min | speed-up | CPU busy (all cores) |",
        "|---|---|---|---|---|---|",
        *(f"| {r['workers']} | {r['partitions']} | {r['seconds']} | "
          f"{r['partitions_per_minute']} | {r['speedup']}x | {r['cpu_busy']:.0%} |"
          for r in rows),
        "",
        f"Machine: {result['machine']['cores']} cores; one run per row; the workers share the "
        "machine with PostgreSQL, Redis, moto and every run's coordinator process.",
    ]  # fmt: skip
    (out_dir / f"scale_out{suffix}.md").write_text("\n".join(lines) + "\n")
    return result
