"""Read-back: the fast path (`resources.reads`: the lake's files, their pages) reads exactly the
rows the SQL route reads, in the same order, whatever happened to the lake before.

Every warehouse here is written through the real write path (a stage, `replace_partition`),
DuckLake's own file registration, or a real extraction of a tiny checkpoint; the reference is
the SQL route on the same warehouse (`reads.sql_vectors`), and the vectors as written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lens_assets.resources import reads
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.parquet_floats import read_float_lists
from lens_assets.resources.schemas import ACTIVATIONS, conform
from lens_assets.resources.staging import ActivationStage
from lens_assets.resources.warehouse import Warehouse

from lens_assets.analyses.reading import load_vectors
from lens_assets.capture.extraction import extract_loaded
from lens_assets.capture.token_roles import POOLED_ROWS
from tests.conftest import tiny_config

MIGRATIONS = sorted(warehouse_module.SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))
Layers = dict[tuple[str, str, str], np.ndarray]  # (dataset, layer, pooling) -> (rows, dim)


def key(dataset: str, index: int) -> str:
    return hashlib.sha256(f"{dataset}/{index}".encode()).hexdigest()[:16]


def rows_of(dataset: str, layer: str, pooling: str, vectors: np.ndarray) -> pa.Table:
    count, dim = vectors.shape
    return pa.table(
        {
            "dataset": [dataset] * count,
            "image_id": [f"{dataset}-img-{i:04d}" for i in range(count)],
            "prompt": ["What colour?" if i % 2 else "What shape?" for i in range(count)],
            "layer": [layer] * count,
            "pooling": [pooling] * count,
            "dim": pa.array([dim] * count, pa.int32()),
            "vector": pa.ListArray.from_arrays(
                pa.array(np.arange(0, vectors.size + 1, max(dim, 1), dtype=np.int32)),
                pa.array(vectors.reshape(-1)),
            ),
            "row_key": [key(dataset, i) for i in range(count)],
            "image_ids": [[f"{dataset}-img-{i:04d}"] for i in range(count)],
        }
    )


def store(
    warehouse: Warehouse,
    model: str,
    layers: Layers,
    datasets: list[str] | None = None,
    lake_ready: bool = True,
) -> None:
    """Replace the model's rows (or those of `datasets`) as extraction does: the stage writes
    the lake's data file, which the commit registers; or (`lake_ready=False`) the stage holds
    the rows and DuckDB writes the data file at the commit."""
    names = (model, "synthetic") if lake_ready else ()
    with ActivationStage(warehouse.location.staging_dir, *names) as stage:
        for (dataset, layer, pooling), vectors in layers.items():
            stage.add_activations(rows_of(dataset, layer, pooling, vectors))
        stage.close()
        warehouse.replace_partition(stage.path, model, "synthetic", datasets, [])


def random_layers(seed: int, datasets: tuple[str, ...] = ("d1", "d2"), rows: int = 40) -> Layers:
    rng = np.random.default_rng(seed)
    layers: Layers = {}
    for dataset in datasets:
        for layer, dim in (("vision.3", 24), ("llm.1", 16), ("llm.10", 16)):
            for pooling in ("last", "mean_image"):
                layers[(dataset, layer, pooling)] = rng.normal(size=(rows, dim)).astype("f4")
    return layers


def by_key(dataset: str, vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The written vectors as every route returns them: sorted by row key."""
    keys = [key(dataset, i) for i in range(len(vectors))]
    order = np.argsort(np.array(keys))
    return [keys[i] for i in order], vectors[order]


def assert_fast_reads_as_sql(warehouse: Warehouse, selection: reads.Selection) -> reads.Vectors:
    fast = reads.read_vectors(warehouse, selection)
    with warehouse.connect(read_only=True) as con:
        slow = reads.sql_vectors(con, selection)
    assert fast.route == "files"
    assert fast.row_keys.to_pylist() == slow.row_keys.to_pylist()
    np.testing.assert_array_equal(fast.matrix, slow.matrix)
    return fast


@pytest.fixture(autouse=True)
def fresh_handles() -> None:
    reads.close_readers()


# -- the fast path against the SQL route ---------------------------------------------------------


@pytest.mark.parametrize("lake_ready", [True, False], ids=["staged-file", "duckdb-written"])
def test_every_layer_and_pooling_reads_as_the_sql_route_reads_it(
    warehouse: Warehouse, lake_ready: bool
) -> None:
    layers = random_layers(0)
    store(warehouse, "m1", layers, lake_ready=lake_ready)
    store(warehouse, "m2", random_layers(1), lake_ready=lake_ready)
    for dataset, layer, pooling in layers:
        fast = assert_fast_reads_as_sql(warehouse, reads.Selection("m1", dataset, layer, pooling))
        keys, expected = by_key(dataset, layers[(dataset, layer, pooling)])
        assert fast.row_keys.to_pylist() == keys
        np.testing.assert_array_equal(fast.matrix, expected)


def test_a_prompt_selects_its_rows_as_in_sql(warehouse: Warehouse) -> None:
    store(warehouse, "m", random_layers(2))
    selection = reads.Selection("m", "d1", "llm.1", "last", prompt="What colour?")
    fast = assert_fast_reads_as_sql(warehouse, selection)
    assert len(fast.row_keys) == 20


def test_a_selection_with_no_rows_reads_empty(warehouse: Warehouse) -> None:
    store(warehouse, "m", random_layers(3))
    fast = reads.read_vectors(warehouse, reads.Selection("m", "d1", "no.such.layer", "last"))
    assert len(fast.row_keys) == 0
    assert fast.matrix.shape == (0, 0)


def test_the_matrix_is_a_writable_array_of_its_own(warehouse: Warehouse) -> None:
    """Analyses centre and scale in place: the matrix must not be a read-only file view."""
    store(warehouse, "m", random_layers(4))
    matrix = reads.read_vectors(warehouse, reads.Selection("m", "d1", "llm.1", "last")).matrix
    assert matrix.flags.writeable and matrix.flags.c_contiguous
    assert matrix.dtype == np.float32


def test_load_vectors_takes_the_fast_path_from_a_warehouse_and_from_a_connection(
    warehouse: Warehouse,
) -> None:
    layers = random_layers(5)
    store(warehouse, "m", layers)
    keys, expected = by_key("d2", layers[("d2", "vision.3", "mean_image")])
    from_warehouse = load_vectors(warehouse, "m", "d2", "vision.3", "mean_image")
    with warehouse.connect(read_only=True) as con:
        from_connection = load_vectors(con, "m", "d2", "vision.3", "mean_image")
    for loaded_keys, matrix in (from_warehouse, from_connection):
        assert loaded_keys == keys
        np.testing.assert_array_equal(matrix, expected)


def test_several_vectors_per_row_are_refused_on_both_routes(warehouse: Warehouse) -> None:
    vectors = np.ones((6, 4), dtype=np.float32)
    rows = rows_of("d", "llm.1", "tokens", vectors)
    rows = rows.set_column(
        rows.schema.get_field_index("row_key"), "row_key", pa.array(["same"] * 6)
    )
    with ActivationStage(warehouse.location.staging_dir) as stage:
        stage.add_activations(rows)
        stage.close()
        warehouse.replace_partition(stage.path, "m", "synthetic", None, [])
    selection = reads.Selection("m", "d", "llm.1", "tokens")
    for fast in (True, False):
        with pytest.raises(ValueError, match="several vectors per row"):
            reads.read_vectors(warehouse, selection, fast=fast)


# -- what happened to the lake before the read ---------------------------------------------------


def test_an_overwritten_partition_reads_its_new_rows(warehouse: Warehouse) -> None:
    store(warehouse, "m", random_layers(6))
    selection = reads.Selection("m", "d1", "llm.10", "last")
    before = reads.read_vectors(warehouse, selection).matrix
    replaced = random_layers(7)
    store(warehouse, "m", replaced)
    after = assert_fast_reads_as_sql(warehouse, selection)
    _, expected = by_key("d1", replaced[("d1", "llm.10", "last")])
    np.testing.assert_array_equal(after.matrix, expected)
    assert not np.array_equal(before, after.matrix)


WRITER = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_readback import random_layers, store
from lens_assets.resources.warehouse import Warehouse
store(Warehouse.at({root!r}), "m", random_layers(11))
"""


def test_an_open_handle_reads_what_another_process_committed_since(warehouse: Warehouse) -> None:
    store(warehouse, "m", random_layers(10))
    selection = reads.Selection("m", "d1", "llm.1", "last")
    reads.read_vectors(warehouse, selection)  # the handle is open now, its file list kept
    script = WRITER.format(tests=str(Path(__file__).parent), root=str(warehouse.root))
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script], check=True, cwd=repo, env=dict(os.environ))
    after = reads.read_vectors(warehouse, selection)
    _, expected = by_key("d1", random_layers(11)[("d1", "llm.1", "last")])
    np.testing.assert_array_equal(after.matrix, expected)


def test_a_warehouse_made_again_at_the_same_place_is_read_anew(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    store(Warehouse.at(root), "m", random_layers(12))
    selection = reads.Selection("m", "d1", "llm.1", "last")
    reads.read_vectors(Warehouse.at(root), selection)
    shutil.rmtree(root)
    store(Warehouse.at(root), "m", random_layers(13))
    _, expected = by_key("d1", random_layers(13)[("d1", "llm.1", "last")])
    np.testing.assert_array_equal(
        reads.read_vectors(Warehouse.at(root), selection).matrix, expected
    )


def test_a_data_file_laid_out_otherwise_is_read_through_arrow(warehouse: Warehouse) -> None:
    """A file DuckLake adopts as it is, its vectors dictionary-encoded (which the page reader
    does not take), still reads as the SQL route reads it."""
    count, dim = 30, 8
    vectors = (np.arange(count * dim) % 3).astype(np.float32).reshape(count, dim)
    rows = rows_of("d", "llm.1", "last", vectors)
    rows = rows.append_column("model", pa.array(["m"] * count))
    rows = rows.append_column("architecture", pa.array(["synthetic"] * count))
    with warehouse.connect():
        pass  # made and migrated
    path = Path(warehouse.location.data_path) / "main" / "activations" / "model=m" / "own.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(conform(rows, ACTIVATIONS), path, use_dictionary=True)
    vector_leaf = pq.read_metadata(path).schema.names.index("element")
    assert pq.read_metadata(path).row_group(0).column(vector_leaf).has_dictionary_page
    with warehouse.connect() as con:
        con.execute(f"CALL ducklake_add_data_files('lake', 'activations', '{path}')")
    fast = assert_fast_reads_as_sql(warehouse, reads.Selection("m", "d", "llm.1", "last"))
    np.testing.assert_array_equal(fast.matrix, by_key("d", vectors)[1])


@pytest.mark.parametrize("lake_ready", [True, False], ids=["staged-file", "duckdb-written"])
def test_rows_deleted_from_a_file_by_a_partial_replacement_are_not_read(
    warehouse: Warehouse, lake_ready: bool
) -> None:
    """Replacing one dataset of a model deletes rows from a file that keeps the other's:
    DuckLake records that in a delete file, which the fast path must honour."""
    store(warehouse, "m", random_layers(8, rows=30), lake_ready=lake_ready)
    replaced = random_layers(9, datasets=("d1",), rows=25)
    store(warehouse, "m", replaced, datasets=["d1"], lake_ready=lake_ready)
    with warehouse.connect(read_only=True) as con:
        deletes = con.execute(
            "SELECT count(*) FROM ducklake_list_files('lake', 'activations') "
            "WHERE delete_file IS NOT NULL"
        ).fetchone()[0]
    assert deletes > 0  # the case under test: a data file with deleted rows
    for dataset in ("d1", "d2"):
        fast = assert_fast_reads_as_sql(warehouse, reads.Selection("m", dataset, "llm.1", "last"))
        assert len(fast.row_keys) == (25 if dataset == "d1" else 30)
    _, expected = by_key("d1", replaced[("d1", "llm.1", "last")])
    np.testing.assert_array_equal(
        reads.read_vectors(warehouse, reads.Selection("m", "d1", "llm.1", "last")).matrix, expected
    )


@pytest.mark.parametrize(
    "kept",
    [len(MIGRATIONS) - 1, next(i for i, m in enumerate(MIGRATIONS) if m.name.startswith("018"))],
    ids=lambda kept: f"until-{MIGRATIONS[kept - 1].name}",
)
def test_a_warehouse_of_an_earlier_schema_reads_the_same_after_its_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    """Rows written under the previous schema (and under one whose files lack a column the
    table has today) read the same by both routes once today's code has upgraded it."""
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in MIGRATIONS[kept:]:
        (old_sql / script.name).unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    vectors = np.random.default_rng(14).normal(size=(12, 6)).astype(np.float32)
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            columns = [row[0] for row in con.execute("DESCRIBE activations").fetchall()]
            con.register("incoming", rows_of("d", "llm.1", "last", vectors))
            con.execute(
                "INSERT INTO activations BY NAME SELECT 'm' AS model, 'synthetic' AS "
                "architecture, * FROM incoming"
            )
    assert "layer_as_written" not in columns or kept == len(MIGRATIONS) - 1
    with warehouse.connect():
        pass  # today's code opens it for writing: the upgrade
    fast = assert_fast_reads_as_sql(warehouse, reads.Selection("m", "d", "llm.1", "last"))
    np.testing.assert_array_equal(fast.matrix, by_key("d", vectors)[1])


def test_a_real_extraction_reads_the_same_by_both_routes(
    warehouse: Warehouse, load_tiny: Callable, tiny_dir: Path, image_dir: Path
) -> None:
    loaded = load_tiny("llava")
    config = tiny_config("llava", tiny_dir, pooling=["mean_image", "mean_text", "last", "tokens"])
    paths = sorted(image_dir.glob("*.png"))
    extract_loaded(loaded, config, warehouse, {"shapes": paths}, progress=False)
    pooled = warehouse.fetch_arrow(
        f"SELECT DISTINCT layer, pooling FROM activations WHERE {POOLED_ROWS} ORDER BY ALL"
    ).to_pylist()
    assert len(pooled) >= 6
    for pair in pooled:
        selection = reads.Selection("llava", "shapes", pair["layer"], pair["pooling"])
        fast = assert_fast_reads_as_sql(warehouse, selection)
        assert fast.matrix.shape[0] == len(paths)


# -- `lens sql`: a plain projection takes the fast path ------------------------------------------

PROJECTION = (
    "SELECT row_key, vector FROM activations "
    "WHERE model = ? AND dataset = ? AND layer = ? AND pooling = ?"
)


@pytest.mark.parametrize(
    ("statement", "plain"),
    [
        (PROJECTION, True),
        (PROJECTION + " ORDER BY row_key", True),
        (PROJECTION + " ORDER BY row_key ASC NULLS LAST", True),
        (
            "SELECT a.row_key, a.vector AS v FROM activations AS a WHERE a.model = ? "
            "AND a.dataset = ? AND a.layer = ? AND a.pooling = ?",
            True,
        ),
        (PROJECTION + " ORDER BY row_key DESC", False),
        (PROJECTION + " LIMIT 3", False),
        (PROJECTION + " AND image_id = 'x'", False),
        (PROJECTION + " OR true", False),
        (PROJECTION.replace("row_key, vector", "*"), False),
        (PROJECTION.replace("row_key, vector", "DISTINCT row_key, vector"), False),
        (PROJECTION.replace("row_key, vector", "row_key, vector[1]"), False),
        (PROJECTION.replace(" AND pooling = ?", ""), False),
    ],
)
def test_which_statements_are_plain_projections(statement: str, plain: bool) -> None:
    found = reads.plain_projection(statement, ["m", "d", "llm.1", "last"])
    assert (found is not None) == plain


def test_lens_sql_gets_a_plain_projection_from_the_files(warehouse: Warehouse) -> None:
    layers = random_layers(15)
    store(warehouse, "m", layers)
    params = ["m", "d1", "vision.3", "last"]
    fast = warehouse.fetch_arrow(PROJECTION + " ORDER BY row_key", params)
    with warehouse.connect(read_only=True) as con:
        slow = con.execute(PROJECTION + " ORDER BY row_key", params).to_arrow_table()
    assert fast.column_names == slow.column_names
    assert fast.column("row_key").to_pylist() == slow.column("row_key").to_pylist()
    assert fast.column("vector").to_pylist() == slow.column("vector").to_pylist()
    limited = warehouse.fetch_arrow(PROJECTION + " ORDER BY row_key LIMIT 3", params)
    assert limited.column("row_key").to_pylist() == slow.column("row_key").to_pylist()[:3]


# -- the page reader against Arrow ---------------------------------------------------------------


def write_lists(path: Path, lengths: list[int], seed: int, **options: object) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.random.default_rng(seed).normal(size=int(offsets[-1])).astype(np.float32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    pq.write_table(pa.table({"vector": lists}), path, **options)
    return lists


def assert_pages_read_as_arrow(path: Path) -> None:
    metadata = pq.read_metadata(path)
    arrow = pq.read_table(path).column("vector")
    row = 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        lists = read_float_lists(
            pa.memory_map(str(path)), group.column(0), metadata.schema.column(0)
        )
        assert lists is not None
        expected = arrow.slice(row, group.num_rows).combine_chunks()
        np.testing.assert_array_equal(
            np.diff(lists.offsets), pc.list_value_length(expected).to_numpy()
        )
        dim = int(np.diff(lists.offsets).max())
        out = np.zeros((group.num_rows, dim), dtype=np.float32)
        equal_width = np.flatnonzero(np.diff(lists.offsets) == dim)
        lists.gather(equal_width, out, equal_width)
        for position in equal_width:
            np.testing.assert_array_equal(out[position], expected[int(position)].values)
        row += group.num_rows


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(min_value=1, max_value=300),
    rows=st.integers(min_value=1, max_value=400),
    wider=st.integers(min_value=0, max_value=50),
    codec=st.sampled_from(["none", "snappy", "zstd"]),
    version=st.sampled_from(["1.0", "2.0"]),
    page_bytes=st.sampled_from([256, 4096, 1 << 20]),
    row_group=st.sampled_from([7, 100, 10_000]),
)
def test_the_page_reader_reads_what_arrow_reads(
    tmp_path_factory: pytest.TempPathFactory,
    width: int,
    rows: int,
    wider: int,
    codec: str,
    version: str,
    page_bytes: int,
    row_group: int,
) -> None:
    """Lists of one width with a run of wider ones (two layers in one row group), any
    compression, page version, page size and row-group size."""
    path = tmp_path_factory.mktemp("pages") / "lists.parquet"
    lengths = [width] * rows + [width + 5] * wider + [width] * 3
    options = {"compression": codec, "data_page_version": version, "use_dictionary": False}
    options |= {"data_page_size": page_bytes, "row_group_size": row_group}
    write_lists(path, lengths, seed=rows, **options)
    assert_pages_read_as_arrow(path)


def test_the_page_reader_reads_lists_of_any_lengths(tmp_path: Path) -> None:
    lengths = list(np.random.default_rng(16).integers(1, 60, size=700))
    write_lists(tmp_path / "ragged.parquet", lengths, seed=16, use_dictionary=False,
                data_page_size=2048)  # fmt: skip
    assert_pages_read_as_arrow(tmp_path / "ragged.parquet")


def test_the_page_reader_reads_byte_stream_split_floats(tmp_path: Path) -> None:
    path = tmp_path / "split.parquet"
    write_lists(path, [32] * 200, seed=17, use_dictionary=False,
                column_encoding={"vector": "BYTE_STREAM_SPLIT"})  # fmt: skip
    assert_pages_read_as_arrow(path)


@pytest.mark.parametrize(
    "vector",
    [
        pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32())),  # a null list
        pa.array([[1.0, 2.0], [], [3.0, 4.0]], pa.list_(pa.float32())),  # an empty list
        pa.array([[1.0, None], [2.0, 3.0]], pa.list_(pa.float32())),  # a null float
        pa.array([[1.0, 2.0], [1.0, 2.0]] * 50, pa.list_(pa.float32())),  # dictionary pages
        pa.array([[1.0, 2.0]], pa.list_(pa.float64())),  # not float32
    ],
    ids=["null-list", "empty-list", "null-float", "dictionary", "double"],
)
def test_the_page_reader_declines_what_it_does_not_take(tmp_path: Path, vector: pa.Array) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"vector": vector}), path)
    metadata = pq.read_metadata(path)
    column, schema = metadata.row_group(0).column(0), metadata.schema.column(0)
    assert read_float_lists(pa.memory_map(str(path)), column, schema) is None
