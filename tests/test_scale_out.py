"""Scale-out, end to end on real servers on loopback: the DuckLake catalog in PostgreSQL, the
data files (and the rendered images) on S3 (moto's server), three model partitions materialized
at once by three Celery workers (Redis broker) through Dagster's Celery executor, one worker
killed with SIGKILL mid-step, and `lens sql` and the Dagster UI reading while they write.

Selected by environment variables alone: the code is the embedded default's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import yaml

from tests.browser import Server, free_port, stop_process_group, wait_for_server
from tests.servers import (
    celery_workers,
    cluster_configs,
    cluster_env,
    lens_sql,
    materialize_partition,
    object_keys,
    postgres,
    redis,
    s3,
)

POOLINGS = ["mean_image", "last"]
# Three hook points per model, named exactly (no globs), each a sequence every pooling applies
# to, so the expected row count is images x 3 x 2.
MODELS = {
    "tiny-llava": ("llava", ["model.vision_tower.encoder.layers.0",
                             "model.vision_tower.encoder.layers.1", "model.language_model.norm"]),
    "tiny-qwen2-vl": ("qwen2-vl", ["model.visual.blocks.0", "model.visual.blocks.1",
                                   "model.language_model.norm"]),
    "tiny-clip": ("clip", ["vision_model.pre_layrnorm", "vision_model.encoder.layers.0",
                           "vision_model.encoder.layers.1"]),
}  # fmt: skip
IMAGES = 60
WORKERS = 3

pytestmark = [pytest.mark.scale_out, pytest.mark.slow]


@contextmanager
def webserver(env: dict[str, str], log: Path) -> Iterator[Server]:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-m", "lens_assets", "-h", "127.0.0.1",
             "-p", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", log)
    try:
        wait_for_server(server, process)
        yield server
    finally:
        stop_process_group(process)


MATERIALIZATIONS = """
{ assetOrError(assetKey: {path: ["activations"]}) { ... on Asset {
    assetMaterializations(limit: 100) { partition
      metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }
"""


def ui_row_counts(server: Server) -> list[tuple[str, int]]:
    """(partition, rows) of every materialization the UI's GraphQL API shows."""
    request = urllib.request.Request(
        f"{server.url}/graphql", data=json.dumps({"query": MATERIALIZATIONS}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=600) as response:
        events = json.load(response)["data"]["assetOrError"]["assetMaterializations"]
    return [
        (event["partition"], entry["intValue"])
        for event in events
        for entry in event["metadataEntries"]
        if entry["label"] == "rows"
    ]


def kill_one_step_mid_extraction(local_root: Path, runs: list[subprocess.Popen]) -> int:
    """SIGKILL the worker process of the first step seen spooling rows (its spool folder is
    named after its pid); returns that pid."""
    while True:
        for spool in (local_root / "staging").glob("run-*/activations.parquet"):
            pid = int(spool.parent.name.split("-")[1])
            os.kill(pid, signal.SIGKILL)
            return pid
        if all(run.poll() is not None for run in runs):
            pytest.fail("every run ended before a step could be killed")
        time.sleep(0.02)


def test_three_workers_fill_a_postgres_and_s3_warehouse_and_survive_a_sigkill(
    tmp_path: Path,
) -> None:
    with ExitStack() as servers:
        pg = servers.enter_context(postgres())
        broker = servers.enter_context(redis(tmp_path))
        store = servers.enter_context(s3())
        configs = cluster_configs(tmp_path / "configs", MODELS, POOLINGS, IMAGES, batch_size=4)
        env = cluster_env(tmp_path, configs, pg, broker, store)
        logs = tmp_path / "logs"
        logs.mkdir()

        # The images (and the Dagster instance) first, in-process; then the cluster.
        images = subprocess.run(["lens", "materialize", "--select", "images"], env=env,
                                capture_output=True, text=True)  # fmt: skip
        assert images.returncode == 0, images.stderr[-3000:]
        n_images = lens_sql(env, "SELECT count(DISTINCT image_id) AS n FROM images")[0]["n"]
        assert n_images > 40
        expected = n_images * 3 * len(POOLINGS)

        servers.enter_context(celery_workers(env, WORKERS, logs))
        ui = servers.enter_context(webserver(env, logs / "webserver.log"))
        runs = [materialize_partition(env, name, logs / f"{name}.log") for name in MODELS]

        seen_by_sql: list[dict[str, int]] = []
        seen_by_ui: list[tuple[str, int]] = []

        def read_while_writing() -> None:
            while any(run.poll() is None for run in runs):
                rows = lens_sql(env, "SELECT model, count(*) AS n FROM activations GROUP BY ALL")
                seen_by_sql.append({r["model"]: r["n"] for r in rows})
                seen_by_ui.extend(ui_row_counts(ui))

        readers = threading.Thread(target=read_while_writing)
        readers.start()
        killed = kill_one_step_mid_extraction(Path(env["LENS_WAREHOUSE"]), runs)
        for run in runs:
            run.wait()
        readers.join()

        for name, run in zip(MODELS, runs, strict=True):
            assert run.returncode == 0, (logs / f"{name}.log").read_text()[-3000:]
        worker_logs = "".join((logs / f"worker{i}.log").read_text() for i in range(WORKERS))
        assert f"pid:{killed} exited with 'signal 9 (SIGKILL)'" in worker_logs

        # Whole partitions only, from the first read to the last, in SQL and in the UI.
        assert len(seen_by_sql) >= 3 and len(seen_by_sql[0]) < len(MODELS)  # read mid-write
        for counts in seen_by_sql:
            assert set(counts.values()) <= {expected}, seen_by_sql
        assert all(rows == expected for _, rows in seen_by_ui), seen_by_ui

        final = lens_sql(env, "SELECT model, count(*) AS n FROM activations GROUP BY ALL")
        assert {r["model"]: r["n"] for r in final} == dict.fromkeys(MODELS, expected)
        duplicates = lens_sql(
            env,
            "SELECT count(*) AS n FROM (SELECT model, image_id, layer, pooling, count(*) AS c "
            "FROM activations GROUP BY ALL HAVING c > 1)",
        )
        assert duplicates == [{"n": 0}]
        assert sorted({p for p, _ in ui_row_counts(ui)}) == sorted(MODELS)

        # The data and the images are on the object store; nothing of the lake is local.
        keys = object_keys(store)
        for name in MODELS:
            assert any(k.startswith(f"lensflow/data/main/activations/model={name}/") for k in keys)
        assert sum(k.startswith("lensflow/datasets/shapes/") for k in keys) >= n_images
        local = Path(env["LENS_WAREHOUSE"])
        assert not (local / "catalog.sqlite").exists() and not (local / "data").exists()
        stored_paths = lens_sql(env, "SELECT DISTINCT path FROM images")
        assert all(row["path"].startswith(f"s3://{store.bucket}/") for row in stored_paths)


def test_an_embedded_warehouse_copies_into_postgres_and_s3(tmp_path: Path, tiny_dir: Path) -> None:
    """`lens copy-warehouse`: the README's way from one machine to the cluster."""
    configs = tmp_path / "configs"
    (configs / "datasets").mkdir(parents=True)
    (configs / "models").mkdir()
    (configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 6\n")
    model = tmp_path / "tiny-llava.yaml"
    architecture, modules = MODELS["tiny-llava"]
    model.write_text(yaml.safe_dump({"architecture": architecture, "modules": modules,
                                     "model_path": str(tiny_dir / "llava"),
                                     "pooling": POOLINGS}))  # fmt: skip
    local = {**os.environ, "LENS_WAREHOUSE": str(tmp_path / "embedded"),
             "LENS_CONFIGS": str(configs), "DAGSTER_HOME": str(tmp_path / "dagster")}  # fmt: skip
    for command in (
        ["lens", "materialize", "--select", "images"],
        [
            "lens",
            "extract",
            str(model),
            "--input-dir",
            str(tmp_path / "embedded" / "datasets" / "shapes"),
        ],
    ):
        done = subprocess.run(command, env=local, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]

    with postgres() as pg, s3() as store:
        env = cluster_env(tmp_path, configs, pg, "redis://unused", store)
        data_path = env["LENS_DATA_PATH"]
        copy = subprocess.run(
            ["lens", "copy-warehouse", "--to-catalog", pg.catalog, "--to-data-path", data_path],
            env={**local, **store.env(), "PGPASSWORD": pg.password}, capture_output=True,
            text=True,
        )  # fmt: skip
        assert copy.returncode == 0, copy.stderr[-2000:]
        query = "SELECT (SELECT count(*) FROM activations) AS a, (SELECT count(*) FROM images) AS i"
        assert lens_sql(env, query) == lens_sql(local, query)
        assert lens_sql(env, query)[0]["a"] > 0
        paths = [r["path"] for r in lens_sql(env, "SELECT path FROM images")]
        assert all(p.startswith(f"s3://{store.bucket}/lensflow/datasets/shapes/") for p in paths)
        keys = object_keys(store)
        assert sum(k.startswith("lensflow/datasets/shapes/") for k in keys) == len(paths)
        assert any(k.startswith("lensflow/data/main/activations/model=tiny-llava/") for k in keys)
