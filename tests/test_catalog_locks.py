"""A locked catalog is waited out, and `lens maintain` never deletes a live writer's files.

Every wait here is for an event (a log line, a process ending), never for a fixed time, so a
busy machine only makes these tests slower.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lens_assets.resources.warehouse import Warehouse

from tests.writers import write_partitions

CONNECT_AND_COUNT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from lens_assets.resources.warehouse import Warehouse
warehouse = Warehouse.at(sys.argv[1])
with warehouse.connect(read_only=sys.argv[2] == "read") as con:
    print(con.execute("SELECT count(*) FROM activations").fetchone()[0])
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "warehouse"
    write_partitions(str(root), "m", 1)
    return root


@contextmanager
def catalog_locked(root: Path) -> Iterator[sqlite3.Connection]:
    """Hold the SQLite catalog's exclusive lock, as a committing writer does."""
    db = sqlite3.connect(root / "catalog.sqlite", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield db
    finally:
        db.execute("ROLLBACK")
        db.close()


def wait_for_line(process: subprocess.Popen[str], marker: str) -> list[str]:
    """The process's stderr lines up to the one holding `marker`; fails if it exits first."""
    seen = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            return seen
    process.wait()
    raise AssertionError(f"the process ended (rc {process.returncode}) before {marker!r}:\n"
                         + "".join(seen))  # fmt: skip


@pytest.mark.parametrize("mode", ["read", "write"])
def test_a_process_connecting_while_the_catalog_is_locked_waits_and_succeeds(
    root: Path, mode: str
) -> None:
    with catalog_locked(root):
        process = subprocess.Popen(
            [sys.executable, "-c", CONNECT_AND_COUNT, str(root), mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_line(process, "the catalog is busy")
    out, err = process.communicate()
    assert process.returncode == 0, err
    assert out.strip() == "50"


def uncommitted_rewrite(con, model: str) -> None:
    """Half a writer's commit: the model's new rows are in a data file, not yet in the
    catalog (exactly what an orphan looks like to `ducklake_delete_orphaned_files`)."""
    con.execute("BEGIN")
    con.execute("DELETE FROM activations WHERE model = ?", [model])
    con.execute(
        "INSERT INTO activations (model, architecture, dataset, image_id, layer, pooling, dim, "
        "vector) SELECT ?, 'test', 'd', 'img' || i, 'layer', 'last', 2, [i, 1.0]::FLOAT[] "
        "FROM range(500) t(i)",
        [model],
    )


def referenced_files_exist(warehouse: Warehouse) -> bool:
    paths = warehouse.fetch_arrow(
        "SELECT data_file FROM ducklake_list_files('lake', 'activations')"
    ).column(0)
    return all(Path(path.as_py()).is_file() for path in paths)


def test_maintain_waits_for_a_writer_mid_commit_and_deletes_none_of_its_files(
    root: Path,
) -> None:
    warehouse = Warehouse.at(root)
    with warehouse.connect() as con, warehouse.write_lease():
        uncommitted_rewrite(con, "m")
        maintain = subprocess.Popen(
            [sys.executable, "-m", "lens_assets.cli", "maintain", "--warehouse", str(root),
             "--orphans-older-than-hours", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_line(maintain, "waiting for the running writers")
        con.execute("COMMIT")
    out, err = maintain.communicate()
    assert maintain.returncode == 0, err
    assert "removed" in out
    assert referenced_files_exist(warehouse)
    rows = warehouse.fetch_arrow("SELECT count(*) FROM activations WHERE model = 'm'")
    assert rows.column(0)[0].as_py() == 500


def maintain_until(root: str, done: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    warehouse = Warehouse.at(root)
    while not done.is_set():
        warehouse.maintain(orphans_older_than_hours=0)


@pytest.mark.slow
def test_maintain_racing_writers_in_a_loop_leaves_every_partition_readable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "warehouse"
    with Warehouse.at(root).connect():
        pass
    context = multiprocessing.get_context("spawn")
    done = context.Event()
    maintainer = context.Process(target=maintain_until, args=(str(root), done))
    writers = [
        context.Process(target=write_partitions, args=(str(root), f"m{i}", 8, float(i)))
        for i in range(2)
    ]
    maintainer.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    done.set()
    maintainer.join()
    assert [w.exitcode for w in writers] == [0, 0] and maintainer.exitcode == 0
    warehouse = Warehouse.at(root)
    assert referenced_files_exist(warehouse)
    rows = warehouse.fetch_arrow(
        "SELECT model, count(*) AS n, max(vector[1]) AS last FROM activations GROUP BY model "
        "ORDER BY model"
    ).to_pylist()
    assert rows == [{"model": "m0", "n": 50, "last": 7.0}, {"model": "m1", "n": 50, "last": 8.0}]
    assert warehouse.fetch_arrow("SELECT count(*) FROM runs").column(0)[0].as_py() == 16
