"""`fetch_arrow` checks a statement (`sql_guard`) once, whichever route it then takes: the lake's
files (a plain projection of one layer), a locked-down read-only connection, or a step's
read-write session; and nothing reaches DuckDB unchecked: a checked statement changed
afterwards is plain text again, checked again, and refused where the guard refuses it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from lens_assets.resources import connection, reads
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.connection import CheckedStatement
from lens_assets.resources.staging import ActivationStage
from lens_assets.resources.warehouse import ReadOnlyError, Warehouse

PROJECTION = (
    "SELECT row_key, vector FROM activations "
    "WHERE model = 'm' AND dataset = 'd' AND layer = 'layer' AND pooling = 'last'"
)
COUNT = "SELECT count(*) AS n FROM activations"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """Four rows of one layer, written as extraction writes them."""
    warehouse = Warehouse.at(tmp_path_factory.mktemp("checks") / "warehouse")
    rows = pa.table(
        {
            "dataset": ["d"] * 4,
            "image_id": [f"img{i}" for i in range(4)],
            "prompt": ["p"] * 4,
            "layer": ["layer"] * 4,
            "pooling": ["last"] * 4,
            "dim": pa.array([2] * 4, pa.int32()),
            "vector": pa.array([[float(i), 1.0] for i in range(4)], pa.list_(pa.float32())),
            "row_key": [f"row{i}" for i in range(4)],
            "image_ids": [[f"img{i}"] for i in range(4)],
        }
    )
    with ActivationStage(warehouse.location.staging_dir, "m", "synthetic") as stage:
        stage.add_activations(rows)
        stage.close()
        warehouse.replace_partition(stage.path, "m", "synthetic", None, [])
    return warehouse


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], int]:
    """How many times a statement went through `sql_guard` since the test began."""
    seen: list[str] = []
    check = connection.checked_statement

    def counting(sql: str) -> str:
        seen.append(str(sql))
        return check(sql)

    monkeypatch.setattr(connection, "checked_statement", counting)
    return seen.count


@pytest.fixture
def fast_reads(monkeypatch: pytest.MonkeyPatch) -> list[pa.Table | None]:
    """What the files route gave for each `fetch_arrow` (None: DuckDB ran the statement)."""
    given: list[pa.Table | None] = []
    fetch = warehouse_module.fetch_projection

    def recording(*args: object) -> pa.Table | None:
        given.append(fetch(*args))  # type: ignore[arg-type]
        return given[-1]

    monkeypatch.setattr(warehouse_module, "fetch_projection", recording)
    return given


@pytest.fixture(autouse=True)
def fresh_handles() -> Iterator[None]:
    yield
    reads.close_readers()


def test_a_projection_read_from_the_files_is_checked_once(
    warehouse: Warehouse, checked: Callable[[str], int], fast_reads: list[pa.Table | None]
) -> None:
    assert warehouse.fetch_arrow(PROJECTION).num_rows == 4
    assert fast_reads[0] is not None, "read from the files"
    assert checked(PROJECTION) == 1


def test_a_statement_run_on_a_read_only_connection_is_checked_once(
    warehouse: Warehouse, checked: Callable[[str], int], fast_reads: list[pa.Table | None]
) -> None:
    assert warehouse.fetch_arrow(COUNT).to_pylist() == [{"n": 4}]
    assert fast_reads == [None], "run by DuckDB"
    assert checked(COUNT) == 1


def test_a_statement_run_in_a_steps_session_is_checked_once(
    warehouse: Warehouse, checked: Callable[[str], int]
) -> None:
    with warehouse.session():
        assert warehouse.fetch_arrow(COUNT).to_pylist() == [{"n": 4}]
    assert checked(COUNT) == 1


@pytest.mark.parametrize("session", [False, True], ids=["read-only", "session"])
def test_a_refused_statement_is_refused_on_either_connection(
    warehouse: Warehouse, session: bool
) -> None:
    with (
        warehouse.session() if session else contextlib.nullcontext(),
        pytest.raises(ReadOnlyError, match="DROP statements are refused"),
    ):
        warehouse.fetch_arrow("DROP TABLE activations")
    assert warehouse.fetch_arrow(COUNT).to_pylist() == [{"n": 4}]


def test_a_checked_statement_changed_afterwards_is_checked_again(warehouse: Warehouse) -> None:
    statement = CheckedStatement(COUNT)
    with warehouse.connect(read_only=True) as con:
        with pytest.raises(ReadOnlyError, match="one statement per call"):
            con.execute(statement + "; DROP TABLE activations")
        assert con.execute(statement).fetchone() == (4,)


def test_a_statement_is_checked_as_it_is_made(tmp_path: Path) -> None:
    with pytest.raises(ReadOnlyError, match="table function read_parquet"):
        CheckedStatement(f"SELECT * FROM read_parquet('{tmp_path}/*.parquet')")


def test_the_files_route_checks_plain_text_it_is_given(warehouse: Warehouse) -> None:
    with pytest.raises(ReadOnlyError, match="one statement per call"):
        reads.fetch_projection(warehouse, PROJECTION + "; DROP TABLE activations", None)
