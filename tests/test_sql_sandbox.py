"""`lens sql` is read-only by construction: one reading statement over the warehouse's tables.

Every statement below was tried against the warehouse as an attacker would (writes, escapes
through the SQLite scanner and ATTACH, the lake's own files, configuration, several statements
in one call); each is refused with a clear error, and afterwards the warehouse and the disk are
exactly as they were. The README's queries still run.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from lens_assets.resources.warehouse import QueryLimitError, ReadOnlyError, Warehouse

from tests.writers import write_partitions

REPO = Path(__file__).resolve().parent.parent

HOSTILE = [
    # writes, through the lake
    "DELETE FROM activations",
    "UPDATE runs SET seconds = 0",
    "INSERT INTO runs (model) VALUES ('x')",
    "DROP TABLE activations",
    "DROP VIEW tensors",
    "CREATE TABLE copied AS SELECT * FROM runs",
    "CREATE TEMP TABLE scratch AS SELECT 1",
    "CREATE OR REPLACE VIEW tensors AS SELECT 1",
    "ALTER TABLE runs ADD COLUMN extra INTEGER",
    "TRUNCATE activations",
    "MERGE INTO runs USING (SELECT 1 AS a) s ON false WHEN NOT MATCHED THEN INSERT (model) "
    "VALUES ('x')",
    "COMMENT ON TABLE runs IS 'x'",
    "CREATE MACRO shadow() AS 1",
    "CREATE SEQUENCE counter",
    "CREATE SECRET leak (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "WITH doomed AS (SELECT 1) DELETE FROM activations",
    "PREPARE wipe AS DELETE FROM activations",
    "EXECUTE wipe",
    "BEGIN TRANSACTION",
    "CHECKPOINT",
    "VACUUM",
    # several statements in one call
    "SELECT 1; DELETE FROM activations",
    "SELECT 1; SELECT 2",
    "USE memory; DETACH lake; ATTACH 'ducklake:sqlite:{catalog}' AS w (DATA_PATH '{data}'); "
    "DELETE FROM w.activations",
    "PIVOT runs ON model",
    # the lake swapped for a writable one, or its catalog reached as a file
    "DETACH lake",
    "USE memory",
    "ATTACH '{catalog}' AS c (TYPE sqlite)",
    "ATTACH '{outside}/new.sqlite' AS c (TYPE sqlite)",
    "ATTACH '{root}/x.duckdb' AS x",
    "ATTACH 'ducklake:sqlite:{catalog}' AS w (DATA_PATH '{data}')",
    "CALL sqlite_attach('{catalog}')",
    "SELECT * FROM sqlite_scan('{catalog}', 'ducklake_data_file')",
    "SELECT * FROM sqlite_scan('{outside}/other.sqlite', 'secrets')",
    "SELECT * FROM sqlite_query('{catalog}', 'DELETE FROM ducklake_data_file')",
    "SELECT (SELECT count(*) FROM sqlite_scan('{catalog}', 'ducklake_snapshot'))",
    "SELECT * FROM __ducklake_metadata_lake.ducklake_data_file",
    "SELECT * FROM __ducklake_metadata_lake.main.ducklake_snapshot",
    "SELECT * FROM elsewhere.main.secrets",
    # files: written, read, listed
    "COPY (SELECT 42) TO '{catalog}'",
    "COPY (SELECT 42) TO '{data}x.csv'",
    "COPY activations TO '{outside}/dump.parquet'",
    "COPY runs FROM '{outside}/rows.csv'",
    "EXPORT DATABASE '{outside}/export'",
    "IMPORT DATABASE '{outside}/export'",
    "SELECT * FROM read_parquet('{data}main/activations/**/*.parquet')",
    "SELECT * FROM '{data}main/runs/*.parquet'",
    "DESCRIBE '{data}main/runs/*.parquet'",
    "SELECT * FROM parquet_metadata('{data}main/runs/*.parquet')",
    "SELECT * FROM read_csv('/etc/hostname')",
    "SELECT * FROM (SELECT * FROM read_csv_auto('/etc/hostname'))",
    "WITH c AS (SELECT * FROM read_json('{outside}/x.json')) SELECT * FROM c",
    "SELECT * FROM read_text('{catalog}')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM glob('{root}/**')",
    # extensions and configuration
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL sqlite_scanner",
    "SET memory_limit = '100GB'",
    "SET threads = 64",
    "RESET memory_limit",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "PRAGMA memory_limit = '100GB'",
    "PRAGMA enable_profiling",
    "PRAGMA profiling_output = '{outside}/profile.txt'",
    "SET VARIABLE x = 1",
    "SELECT * FROM enable_profiling()",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM which_secret('s3://bucket/x', 's3')",
    # the lake's maintenance and write functions, called or selected
    "CALL ducklake_expire_snapshots('lake')",
    "CALL ducklake_cleanup_old_files('lake', cleanup_all => true)",
    "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
    "SELECT * FROM ducklake_delete_orphaned_files('lake', cleanup_all => true)",
    "SELECT * FROM ducklake_add_data_files('lake', 'runs', '{outside}/x.parquet')",
    "SELECT * FROM ducklake_set_option('lake', 'data_inlining_row_limit', 10)",
    "SELECT * FROM ducklake_merge_adjacent_files('lake')",
    # SQL that runs SQL
    "SELECT * FROM query('DELETE FROM activations')",
    "SELECT * FROM query_table('activations')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "EXPLAIN ANALYZE DELETE FROM activations",
    "EXPLAIN COPY (SELECT 1) TO '{outside}/plan.csv'",
]
READS = [
    "SELECT count(*) FROM activations",
    "DESCRIBE activations",
    "SHOW TABLES",
    "PRAGMA table_info('runs')",
    "EXPLAIN SELECT * FROM runs",
    "WITH r AS (SELECT * FROM runs) SELECT count(*) FROM r",
    "SELECT * FROM nearest_images('m', 'layer', 'last', 'img0', 3)",
    "SELECT table_name FROM information_schema.tables",
    "SELECT count(*) FROM ducklake_snapshots('lake')",
    "SELECT count(*) FROM activations AT (TIMESTAMP => now())",
    "SELECT list_cosine_similarity(vector, vector) FROM activations LIMIT 1",
    "SELECT count(*) FROM range(10) JOIN generate_series(1, 3) ON true",
]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    root = tmp_path_factory.mktemp("sandbox") / "warehouse"
    write_partitions(str(root), "m", 2)
    return Warehouse.at(root)


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the warehouse with a SQLite file of someone else's in it."""
    folder = tmp_path_factory.mktemp("outside")
    with sqlite3.connect(folder / "other.sqlite") as db:
        db.execute("CREATE TABLE secrets (value TEXT)")
        db.execute("INSERT INTO secrets VALUES ('private')")
    (folder / "x.json").write_text('{"a": 1}')
    (folder / "rows.csv").write_text("model\nx\n")
    return folder


def state(*folders: Path) -> dict[str, str]:
    """Every file under the folders with its content hash (the write lease has no content)."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def filled(statement: str, warehouse: Warehouse, outside: Path) -> str:
    return statement.format(
        catalog=warehouse.root / "catalog.sqlite",
        data=warehouse.location.data_path,
        root=warehouse.root,
        outside=outside,
    )


def test_at_least_fifty_hostile_statements_are_tried() -> None:
    assert len(set(HOSTILE)) == len(HOSTILE) >= 50


@pytest.mark.parametrize("statement", HOSTILE)
def test_hostile_statement_is_refused_and_changes_nothing(
    statement: str, warehouse: Warehouse, outside: Path
) -> None:
    before = state(warehouse.root, outside)
    with pytest.raises(ReadOnlyError) as refused:
        warehouse.fetch_arrow(filled(statement, warehouse, outside))
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message
    assert re.search(r"read-only|one statement|refused|cannot", message), message
    assert state(warehouse.root, outside) == before  # the catalog's bytes included


def test_the_warehouse_is_whole_after_every_hostile_statement(warehouse: Warehouse) -> None:
    """Runs after the hostile statements (pytest keeps file order): every row is there."""
    counts = warehouse.fetch_arrow(
        "SELECT (SELECT count(*) FROM activations) AS rows, (SELECT count(*) FROM runs) AS runs"
    ).to_pylist()
    assert counts == [{"rows": 50, "runs": 2}]


@pytest.mark.parametrize("statement", READS)
def test_reads_still_run(statement: str, warehouse: Warehouse) -> None:
    assert warehouse.fetch_arrow(statement).num_rows >= 1


def test_analyses_read_connections_refuse_the_same_statements(
    warehouse: Warehouse, outside: Path
) -> None:
    """The read-only connection the analyses and the UI's metadata use is guarded too."""
    refused = (
        "DETACH lake",
        "ATTACH '{catalog}' AS c (TYPE sqlite)",
        "SELECT * FROM sqlite_scan('{catalog}', 'ducklake_snapshot')",
    )
    with warehouse.connect(read_only=True) as con:
        for statement in refused:
            with pytest.raises(ReadOnlyError):
                con.execute(filled(statement, warehouse, outside))
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)


def test_the_read_connections_configuration_is_locked(warehouse: Warehouse) -> None:
    """Beneath the statement check, DuckDB itself refuses a settings change or a file."""
    with warehouse.connect(read_only=True) as con:
        engine = con._con
        with pytest.raises(Exception, match="locked"):
            engine.execute("SET memory_limit = '100GB'")
        with pytest.raises(Exception, match="disabled by configuration"):
            engine.execute("SELECT * FROM read_csv('/etc/hostname')")
        assert engine.execute("SELECT current_setting('temp_directory')").fetchone() == ("",)


def test_a_query_past_its_time_limit_is_stopped_with_a_clear_error(warehouse: Warehouse) -> None:
    with pytest.raises(QueryLimitError, match="time limit of 1 s"):
        warehouse.fetch_arrow("SELECT count(*) FROM generate_series(1, 1e12::BIGINT)", timeout=1)


def test_a_query_past_its_memory_limit_is_stopped_with_a_clear_error(
    warehouse: Warehouse,
) -> None:
    with pytest.raises(QueryLimitError, match="more memory than its limit"):
        warehouse.fetch_arrow(
            "SELECT list(range) FROM range(2000000000)", memory_limit="100MB", timeout=600
        )


def lens_sql(warehouse: Warehouse, query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lens_assets.cli", "sql", query, "--warehouse",
         str(warehouse.root)],
        capture_output=True, text=True, cwd=warehouse.root,
    )  # fmt: skip


def test_lens_sql_refuses_in_one_line_and_leaves_no_file(
    warehouse: Warehouse, outside: Path
) -> None:
    before = state(warehouse.root, outside)
    done = lens_sql(warehouse, f"COPY (SELECT 42) TO '{warehouse.root / 'catalog.sqlite'}'")
    assert done.returncode != 0
    assert done.stderr.startswith("Error: COPY statements are refused")
    assert "Traceback" not in done.stderr
    assert state(warehouse.root, outside) == before
    assert not (warehouse.root / ".tmp").exists()


def test_the_readmes_lens_sql_commands_still_run(warehouse: Warehouse) -> None:
    commands = re.findall(r'^lens sql "([^"]*)"', (REPO / "README.md").read_text(), re.M)
    assert len(commands) >= 3
    for command in commands:
        done = lens_sql(warehouse, " ".join(command.split()))
        assert done.returncode == 0, done.stderr
