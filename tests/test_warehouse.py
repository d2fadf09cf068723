"""The DuckLake warehouse: schema from sql/, exact vectors, whole replacements, read-only SQL."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
import torch
from lens_assets.resources.warehouse import ReadOnlyError, Warehouse, retry_transaction

from lens_assets.capture.extraction import capture_batch, extract_to_warehouse
from lens_assets.capture.hooks import HookPointError
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.images import folder_images, load_image
from tests.conftest import HOOK_POINTS, tiny_config
from tests.writers import write_partitions


def extract(warehouse: Warehouse, tiny_dir: Path, image_dir: Path, **overrides: object):
    config = tiny_config("llava", tiny_dir, batch_size=2, **overrides)
    return extract_to_warehouse(
        config, "tiny-llava", warehouse, {"shapes": folder_images(image_dir)}, progress=False
    )


def count(warehouse: Warehouse, sql: str) -> int:
    return warehouse.fetch_arrow(sql).column(0)[0].as_py()


def test_schema_comes_from_the_sql_folder(warehouse: Warehouse) -> None:
    with warehouse.connect() as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        columns = [r[0] for r in con.execute("DESCRIBE activations").fetchall()]
    assert {"images", "image_labels", "activations", "runs"} <= tables
    assert "tensors" in views
    assert columns == [
        "model", "architecture", "dataset", "image_id", "prompt", "layer", "pooling",
        "token_index", "token_role", "dim", "vector", "tile", "row_key", "image_ids",
        "image_index", "layer_as_written",
    ]  # fmt: skip


def test_vectors_read_back_equal_the_captured_tensors_exactly(
    warehouse: Warehouse,
    tiny_dir: Path,
    image_dir: Path,
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    loaded = load_tiny("llava")
    images = [load_image(p) for p in folder_images(image_dir)][:2]
    prompt = "What colour is the shape?"
    pieces = capture_batch(
        loaded, [i.image for i in images], [prompt] * 2, HOOK_POINTS["llava"], ["last", "tokens"]
    )
    stored = {
        (r["image_id"], r["layer"], r["pooling"], r["token_index"]): r["vector"]
        for r in warehouse.fetch_arrow(
            "SELECT image_id, layer, pooling, token_index, vector FROM activations"
        ).to_pylist()
    }
    compared = 0
    for layer, pooled in pieces:
        for row, sample in enumerate(pooled.samples.tolist()):
            index = int(pooled.token_index[row]) if pooled.token_index is not None else None
            vector = stored[(images[sample].image_id, layer, pooled.pooling, index)]
            assert torch.equal(torch.tensor(vector), pooled.vectors[row])
            compared += 1
    assert compared > 100


def test_activations_are_partitioned_by_model_in_parquet(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    files = list((warehouse.root / "data").rglob("*.parquet"))
    assert any(f.parent.name == "model=tiny-llava" for f in files)
    assert duckdb.sql(f"SELECT count(*) FROM '{warehouse.root}/data/main/activations/**/*.parquet'"
                      ).fetchone()[0] > 0  # fmt: skip


def test_reextracting_replaces_the_partition_without_duplicates(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    first = extract(warehouse, tiny_dir, image_dir)
    second = extract(warehouse, tiny_dir, image_dir, pooling=["last"])
    total = count(warehouse, "SELECT count(*) FROM activations WHERE model = 'tiny-llava'")
    assert total == second.rows < first.rows
    distinct = count(
        warehouse,
        "SELECT count(*) FROM (SELECT DISTINCT image_id, layer, pooling, token_index "
        "FROM activations)",
    )
    assert distinct == total
    assert count(warehouse, "SELECT count(*) FROM runs") == 2
    assert count(warehouse, "SELECT count(DISTINCT image_id) FROM images") == 5


def test_runs_row_records_the_efficiency_figures(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    (run,) = warehouse.fetch_arrow("SELECT * FROM runs").to_pylist()
    assert run["model"] == "tiny-llava" and run["dataset"] == "shapes"
    assert run["device"] == "cpu" and run["dtype"] == "float32" and run["batch_size"] == 2
    assert run["n_images"] == 5
    assert run["seconds"] > 0
    assert run["per_image_seconds"] == pytest.approx(run["seconds"] / 5)
    assert run["peak_memory_bytes"] > 10 * 2**20


def test_cosine_similarity_and_the_vlm_lens_view_work(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    self_similarity = (
        warehouse.fetch_arrow("SELECT min(list_cosine_similarity(vector, vector)) FROM activations")
        .column(0)[0]
        .as_py()
    )
    assert self_similarity == pytest.approx(1.0, abs=1e-5)
    row = warehouse.fetch_arrow("SELECT * FROM tensors LIMIT 1").to_pylist()[0]
    assert list(row) == [
        "name", "architecture", "image_path", "prompt", "label", "layer", "pooling_method",
        "tensor_dim", "tensor",
    ]  # fmt: skip
    assert row["name"] == "tiny-llava" and row["image_path"].endswith(".png")
    assert len(row["tensor"]) == row["tensor_dim"]


def test_read_only_queries_cannot_write_or_read_outside_the_warehouse(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    with pytest.raises(ReadOnlyError, match="read-only"):
        warehouse.fetch_arrow("DELETE FROM activations")
    with pytest.raises(ReadOnlyError, match="read_csv"):
        warehouse.fetch_arrow("SELECT * FROM read_csv('/etc/hostname')")
    assert count(warehouse, "SELECT count(*) FROM activations") > 0


def test_maintain_removes_files_only_old_snapshots_used(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    extract(warehouse, tiny_dir, image_dir)
    partition = warehouse.root / "data" / "main" / "activations" / "model=tiny-llava"
    before = len(list(partition.glob("*.parquet")))
    rows = count(warehouse, "SELECT count(*) FROM activations")
    stats = warehouse.maintain()
    after = len(list(partition.glob("*.parquet")))
    assert after < before and stats["files_removed"] >= before - after
    assert count(warehouse, "SELECT count(*) FROM activations") == rows


def test_a_locked_commit_is_retried_not_lost() -> None:
    attempts = []

    def work() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise duckdb.TransactionException(
                "Failed to flush changes into DuckLake: database is locked"
            )
        return "committed"

    assert retry_transaction(work, base_delay=0.001) == "committed"
    assert len(attempts) == 3


def test_other_errors_are_not_retried() -> None:
    attempts = []

    def work() -> None:
        attempts.append(1)
        raise duckdb.CatalogException("Table with name nope does not exist")

    with pytest.raises(duckdb.CatalogException):
        retry_transaction(work, base_delay=0.001)
    assert len(attempts) == 1


@pytest.mark.slow
def test_concurrent_writers_each_land_whole(tmp_path: Path) -> None:
    root = tmp_path / "warehouse"
    with Warehouse.at(root).connect():
        pass  # create the schema once, as a first run would
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=write_partitions, args=(str(root), f"m{i}", 4)) for i in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    warehouse = Warehouse.at(root)
    rows = warehouse.fetch_arrow(
        "SELECT model, count(*) AS n, min(vector[1]) AS lo, max(vector[1]) AS hi "
        "FROM activations GROUP BY model ORDER BY model"
    ).to_pylist()
    assert rows == [{"model": f"m{i}", "n": 50, "lo": 3.0, "hi": 3.0} for i in range(3)]
    assert count(warehouse, "SELECT count(*) FROM runs") == 12


def test_two_writers_of_the_same_model_leave_one_whole_result(tmp_path: Path) -> None:
    root = tmp_path / "warehouse"
    with Warehouse.at(root).connect():
        pass
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=write_partitions, args=(str(root), "same", 4, offset))
        for offset in (0.0, 100.0)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    (row,) = (
        Warehouse.at(root)
        .fetch_arrow("SELECT count(*) AS n, list(DISTINCT vector[1]) AS values FROM activations")
        .to_pylist()
    )
    assert row["n"] == 50  # one writer's last replacement, whole: no mix, no duplicate
    assert row["values"] in ([3.0], [103.0])


def test_a_failed_extraction_leaves_the_previous_partition_intact(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    config = tiny_config("clip", tiny_dir)
    paths = folder_images(image_dir)
    first = extract_to_warehouse(config, "tiny-clip", warehouse, {"shapes": paths}, progress=False)
    before = warehouse.fetch_arrow("SELECT * FROM activations ORDER BY ALL").to_pylist()
    # With no prompt the text tower never runs, so its hook point has nothing to record.
    broken = tiny_config("clip", tiny_dir, prompt="")
    with pytest.raises(HookPointError, match=r"text_model\.encoder\.layers\.1"):
        extract_to_warehouse(broken, "tiny-clip", warehouse, {"shapes": paths}, progress=False)
    after = warehouse.fetch_arrow("SELECT * FROM activations ORDER BY ALL").to_pylist()
    assert after == before and len(after) == first.rows
    assert count(warehouse, "SELECT count(*) FROM runs") == 1
    assert not list(warehouse.location.staging_dir.glob("*.duckdb"))
