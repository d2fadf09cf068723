"""The write path: batches staged on a writer thread beside the forward passes, the stage
written as the lake's own data file (clustered by layer, keys encoded), and a commit that
registers that file instead of rewriting it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lens_assets.resources.staging import ActivationStage
from lens_assets.resources.warehouse import Warehouse, WarehouseError

from lens_assets.capture import extraction
from lens_assets.capture.extraction import BatchWriter, extract_to_warehouse
from lens_assets.data.images import folder_images
from tests.conftest import tiny_config

MODEL = "tiny-llava"


def extract(warehouse: Warehouse, tiny_dir: Path, image_dir: Path):
    config = tiny_config("llava", tiny_dir, batch_size=2)
    return extract_to_warehouse(
        config, MODEL, warehouse, {"shapes": folder_images(image_dir)}, progress=False
    )


def stored(warehouse: Warehouse) -> list[dict[str, object]]:
    return warehouse.fetch_arrow(
        "SELECT * EXCLUDE (model, architecture) FROM activations "
        "ORDER BY layer, pooling, row_key, token_index"
    ).to_pylist()


def catalog_files(warehouse: Warehouse) -> list[tuple[str, int]]:
    """(path, path_is_relative) of every live activations data file, from the catalog."""
    with sqlite3.connect(warehouse.root / "catalog.sqlite") as db:
        return db.execute(
            "SELECT f.path, f.path_is_relative FROM ducklake_data_file AS f "
            "JOIN ducklake_table AS t USING (table_id) "
            "WHERE t.table_name = 'activations' AND f.end_snapshot IS NULL "
            "AND t.end_snapshot IS NULL"
        ).fetchall()


def batch(layer: str, rows: int, dim: int = 4, pooling: str = "last") -> pa.Table:
    vectors = np.arange(rows * dim, dtype=np.float32)
    return pa.table(
        {
            "row_key": [f"{i:016x}" for i in range(rows)],
            "layer": [layer] * rows,
            "pooling": [pooling] * rows,
            "dim": pa.array([dim] * rows, pa.int32()),
            "vector": pa.ListArray.from_arrays(
                pa.array(np.arange(0, rows * dim + 1, dim, dtype=np.int32)), pa.array(vectors)
            ),
            "dataset": ["d"] * rows,
        }
    )


def test_the_commit_registers_the_staged_file_as_the_lakes_own(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    result = extract(warehouse, tiny_dir, image_dir)
    ((path, relative),) = catalog_files(warehouse)
    assert relative == 1, "a file outside the data path would not move with the warehouse"
    assert path.startswith(f"model={MODEL}/")
    assert pq.read_metadata(warehouse.root / "data/main/activations" / path).num_rows == (
        result.rows
    )
    assert not list(warehouse.location.staging_dir.glob("run-*")), "the stage is removed"


def test_a_second_run_replaces_the_first_and_maintain_removes_its_file(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    first = stored(warehouse)
    ((old, _),) = catalog_files(warehouse)
    extract(warehouse, tiny_dir, image_dir)
    ((new, _),) = catalog_files(warehouse)
    assert new != old
    assert stored(warehouse) == first
    warehouse.maintain()
    assert not (warehouse.root / "data/main/activations" / old).exists()
    assert (warehouse.root / "data/main/activations" / new).exists()


def test_an_error_on_the_writer_thread_fails_the_run_and_keeps_the_previous_rows(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    before = stored(warehouse)
    staged = extraction.stage_batch
    calls: list[str] = []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise OSError("the staging disk went away")
        staged(*args, **kwargs)

    monkeypatch.setattr(extraction, "stage_batch", failing)
    with pytest.raises(OSError, match="staging disk went away"):
        extract(warehouse, tiny_dir, image_dir)
    assert calls[0] == "lens-batch-writer", "batches are staged off the main thread"
    assert len(calls) == 2, "nothing is staged after the error"
    assert stored(warehouse) == before
    assert len(catalog_files(warehouse)) == 1
    assert not list(warehouse.location.staging_dir.glob("run-*"))


def test_the_commit_uses_the_connection_attached_while_the_batches_computed(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attach (0.1-0.3 s) runs on its own thread beside the batches: the run attaches
    the lake once for its commit, there, and the rows land."""
    extract(warehouse, tiny_dir, image_dir)  # the name is claimed; the rows exist
    attach = type(warehouse)._attach
    threads: list[str] = []

    def recorded(self: Warehouse, *args: object, **kwargs: object) -> None:
        threads.append(threading.current_thread().name)
        attach(self, *args, **kwargs)

    monkeypatch.setattr(type(warehouse), "_attach", recorded)
    extract(warehouse, tiny_dir, image_dir)
    assert [name.startswith("lens-attach") for name in threads].count(True) == 1
    assert len(threads) == 1, "the commit opens no connection of its own"
    assert stored(warehouse)


def test_a_failed_attach_fails_the_run_with_its_error_and_stores_nothing(
    warehouse: Warehouse, tiny_dir: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extract(warehouse, tiny_dir, image_dir)
    before = stored(warehouse)

    def refused(self: Warehouse, *args: object, **kwargs: object) -> None:
        raise WarehouseError("the catalog is unreachable")

    monkeypatch.setattr(type(warehouse), "_attach", refused)
    with pytest.raises(WarehouseError, match="catalog is unreachable"):
        extract(warehouse, tiny_dir, image_dir)
    monkeypatch.undo()
    assert stored(warehouse) == before
    assert not list(warehouse.location.staging_dir.glob("run-*"))


def test_the_batch_writer_keeps_the_order_it_was_given() -> None:
    done: list[int] = []
    with BatchWriter(depth=1) as writer:
        for value in range(50):
            writer.submit(lambda value=value: done.append(value))
        writer.drain()
    assert done == list(range(50))


def test_the_batch_writer_raises_its_error_at_the_next_submit_and_skips_the_rest() -> None:
    done: list[int] = []

    def fail() -> None:
        raise ValueError("bad batch")

    with BatchWriter() as writer:
        writer.submit(fail)
        with pytest.raises(ValueError, match="bad batch"):
            writer.drain()
        with pytest.raises(ValueError, match="bad batch"):
            writer.submit(lambda: done.append(1))
    assert done == []


def test_the_stage_clusters_rows_by_layer_then_pooling_in_row_groups_of_whole_layers(
    tmp_path: Path,
) -> None:
    with ActivationStage(tmp_path, "m", "a") as stage:
        for _ in range(3):  # batches arrive layer by layer, each with both poolings
            for layer in ("b.layer", "a.layer"):
                stage.add_activations(batch(layer, 5, pooling="last"))
                stage.add_activations(batch(layer, 5, pooling="mean"))
        stage.close()
        written = pq.read_table(stage.path / "activations.parquet")
        groups = pq.ParquetFile(stage.path / "activations.parquet").metadata.num_row_groups
    layers = written.column("layer").to_pylist()
    poolings = written.column("pooling").to_pylist()
    # the order first met, each layer's rows together, then each pooling's within it
    assert layers == ["b.layer"] * 30 + ["a.layer"] * 30
    assert poolings == (["last"] * 15 + ["mean"] * 15) * 2
    assert written.column("model").unique().to_pylist() == ["m"]
    assert groups == 1, "small layers share one row group (and its key dictionaries)"


def test_large_layers_get_row_groups_of_their_own(tmp_path: Path) -> None:
    with ActivationStage(tmp_path, "m", "a") as stage:
        for layer in ("one", "two", "three"):
            stage.add_activations(batch(layer, 1_000, dim=512))  # 2 MB a layer
        stage.close()
        metadata = pq.read_metadata(stage.path / "activations.parquet")
    column = metadata.schema.to_arrow_schema().names.index("layer")
    bounds = [
        (metadata.row_group(i).column(column).statistics.min,
         metadata.row_group(i).column(column).statistics.max)
        for i in range(metadata.num_row_groups)
    ]  # fmt: skip
    assert bounds == [("one", "one"), ("two", "two"), ("three", "three")]


def test_a_stage_made_for_another_model_is_refused(warehouse: Warehouse) -> None:
    with ActivationStage(warehouse.location.staging_dir, "other", "a") as stage:
        stage.add_activations(batch("layer", 3))
        stage.close()
        with pytest.raises(WarehouseError, match="another model's rows"):
            warehouse.replace_partition(stage.path, "this", "a", None, [])
    assert not warehouse.exists(), "refused before the lake is touched"


def test_a_stage_without_its_model_is_inserted_with_it(warehouse: Warehouse) -> None:
    """Stages made without a model (imports, benchmarks) still commit: the insert adds it."""
    with ActivationStage(warehouse.location.staging_dir) as stage:
        stage.add_activations(batch("layer", 3))
        stage.close()
        warehouse.replace_partition(stage.path, "this", "a", None, [])
    rows = warehouse.fetch_arrow("SELECT model, architecture FROM activations").to_pylist()
    assert rows == [{"model": "this", "architecture": "a"}] * 3


def test_a_fresh_warehouse_applies_every_migration_in_one_catalog_commit(
    warehouse: Warehouse,
) -> None:
    with warehouse.connect() as con:
        applied = con.execute("SELECT count(*) FROM lens_migrations").fetchone()[0]
        snapshots = con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()[0]
    assert applied > 20
    assert snapshots <= 3, "the lake's creation, lens_migrations, then every script at once"


def test_every_key_column_is_dictionary_encoded_and_compressed_and_vectors_stored_raw(
    tmp_path: Path,
) -> None:
    with ActivationStage(tmp_path, "m", "a") as stage:
        table = batch("layer", 10)
        table = table.append_column("image_ids", pa.array([["x" * 32]] * 10))
        stage.add_activations(table)
        stage.close()
        metadata = pq.read_metadata(stage.path / "activations.parquet")
    chunks = {
        metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i)
        for i in range(metadata.num_columns)
    }
    for path in ("image_ids.list.element", "row_key", "layer", "model"):
        assert "RLE_DICTIONARY" in chunks[path].encodings, path
        assert chunks[path].compression == "ZSTD", path
    assert chunks["vector.list.element"].compression == "UNCOMPRESSED"
