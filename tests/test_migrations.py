"""Opening a warehouse for writing applies the `sql/NNN_*.sql` scripts it lacks: all in one
catalog commit, or, where that fails, each in its own, so the scripts before a broken one stay
applied and recorded, and the broken one's own error reaches the caller."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.warehouse import Warehouse


@pytest.fixture
def sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of sql/ the warehouse is opened with, to which a test adds scripts."""
    copy = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, copy)
    monkeypatch.setattr(warehouse_module, "SQL_DIR", copy)
    return copy


def applied(warehouse: Warehouse) -> set[str]:
    return set(warehouse.fetch_arrow("SELECT name FROM lens_migrations").column(0).to_pylist())


def snapshots(warehouse: Warehouse) -> int:
    return warehouse.fetch_arrow("SELECT count(*) FROM ducklake_snapshots('lake')")[0][0].as_py()


def test_a_broken_script_raises_its_error_and_the_scripts_before_it_stay_applied(
    warehouse: Warehouse, sql_dir: Path
) -> None:
    with warehouse.connect():
        pass
    before = applied(warehouse)
    (sql_dir / "998_good.sql").write_text("CREATE TABLE good_marker (x INTEGER);")
    (sql_dir / "999_broken.sql").write_text("SELECT * FROM no_such_table;")
    with pytest.raises(duckdb.CatalogException, match="no_such_table"), warehouse.connect():
        pass
    assert applied(warehouse) == before | {"998_good.sql"}
    assert warehouse.fetch_arrow("SELECT count(*) FROM good_marker")[0][0].as_py() == 0


def test_the_broken_script_once_mended_is_applied_on_the_next_open(
    warehouse: Warehouse, sql_dir: Path
) -> None:
    (sql_dir / "999_broken.sql").write_text("SELECT * FROM no_such_table;")
    with pytest.raises(duckdb.CatalogException), warehouse.connect():
        pass
    (sql_dir / "999_broken.sql").write_text("CREATE TABLE mended (x INTEGER);")
    with warehouse.connect():
        pass
    assert "999_broken.sql" in applied(warehouse)
    assert warehouse.fetch_arrow("SELECT count(*) FROM mended")[0][0].as_py() == 0


def test_a_script_recorded_meanwhile_is_not_run_again_and_commits_nothing(
    warehouse: Warehouse, sql_dir: Path
) -> None:
    """As when another process applies a script between this one listing what is pending and
    applying it: 998 records 999 (which would fail if run), so one by one 999 is skipped."""
    with warehouse.connect():
        pass
    made = snapshots(warehouse)
    (sql_dir / "998_records_the_next.sql").write_text(
        "INSERT INTO lens_migrations VALUES ('999_broken.sql', now());"
    )
    (sql_dir / "999_broken.sql").write_text("SELECT * FROM no_such_table;")
    with warehouse.connect():
        pass
    assert {"998_records_the_next.sql", "999_broken.sql"} <= applied(warehouse)
    assert snapshots(warehouse) == made + 1, "998's commit only"
