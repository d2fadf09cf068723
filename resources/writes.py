"""Changing the warehouse's rows: whole partitions replaced in one transaction, copies between
warehouses, and maintenance, all under the write lease.

Every write deletes the rows it replaces and inserts the new ones in the same transaction, so
a reader sees the old rows or the new ones, never a mix or a duplicate; a transaction that
meets a locked catalog is retried whole. Opening the warehouse lives in `connection`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from lens_assets.resources.connection import (
    LAKE,
    WarehouseConnection,
    retry_transaction,
    rollback_quietly,
)
from lens_assets.resources.errors import WarehouseError
from lens_assets.resources.location import quoted
from lens_assets.resources.schemas import IMAGE_ERRORS, RUNS

from lens_assets.data import files
from lens_assets.data.rows import RowInput

log = logging.getLogger(__name__)


class WarehouseWrites(WarehouseConnection):
    """The writes of a warehouse: each replaces a partition's rows whole, or maintains files."""

    @contextmanager
    def write_lease(self, exclusive: bool = False) -> Iterator[None]:
        """Writers hold the lease shared while their data files are written but not yet
        committed; `maintain` holds it exclusively, so it never deletes such a file as an
        orphan, nor expires the snapshot a writer started from. A file lock in the root, so
        embedded warehouses only; on a shared catalog (PostgreSQL + S3) `maintain` leaves
        orphans younger than its minimum age instead."""
        if not self.location.is_local:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        with open(self.root / "write.lease", "a+b") as handle:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning(
                    "waiting for %s of %s to finish",
                    "the running writers" if exclusive else "maintenance",
                    self.root,
                )
                fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def replace_partition(
        self,
        stage: Path,
        model: str,
        architecture: str,
        datasets: Sequence[str] | None,
        runs: Sequence[dict[str, Any]],
        image_errors: Sequence[dict[str, str]] | None = None,
    ) -> int:
        """Replace a model's rows (all of them, or those of `datasets`) with the staged ones and
        log the runs, in one transaction: readers see the old rows or the new ones, never a mix
        or a duplicate. `image_errors` (dataset, path, error), when given, replace the error
        rows of the runs' datasets (`lens extract`, which has no `images` step to record
        them). Returns the model's row count after the commit.

        The stage's files hold the `activations` and `images` columns of `staging` (the
        table's schema less what the commit supplies), so every insert goes by name."""
        scope, scope_params = "model = ?", [model]
        if datasets is not None:
            scope += f" AND dataset IN ({', '.join('?' for _ in datasets)})"
            scope_params += list(datasets)
        insert_runs = _insert_values("runs", RUNS)
        insert_errors = _insert_values("image_errors", IMAGE_ERRORS)
        staged = stage / "activations.parquet"
        lake_ready = _lake_ready(staged, model)
        # A lake-ready file on a local lake becomes one of its data files as it is: the commit
        # registers it (metadata only) instead of reading and rewriting every row.
        adopt = lake_ready and self.location.is_local and pq.read_metadata(staged).num_rows > 0
        with self.connect() as con, self.write_lease():
            activations = quoted(staged)
            images = quoted(stage / "images.parquet")
            data_file = self._table_folder("activations") / _lake_file_name(model)
            if adopt:
                _move(staged, data_file)

            def commit() -> int:
                con.execute("BEGIN")
                try:
                    con.execute(f"DELETE FROM activations WHERE {scope}", scope_params)
                    if adopt:
                        con.execute(
                            f"CALL ducklake_add_data_files({quoted(LAKE)}, 'activations', "
                            f"{quoted(data_file)})"
                        )
                    elif lake_ready:  # the stage is clustered already: it streams in as is
                        con.execute(
                            "INSERT INTO activations BY NAME "
                            f"SELECT * FROM read_parquet({activations})"
                        )
                    else:
                        con.execute(
                            f"""
                            INSERT INTO activations BY NAME
                            SELECT ? AS model, ? AS architecture, *
                            FROM read_parquet({activations})
                            """,
                            [model, architecture],
                        )
                    con.execute(
                        f"""
                        INSERT INTO images BY NAME
                        SELECT DISTINCT s.*
                        FROM read_parquet({images}) AS s
                        WHERE NOT EXISTS (
                            SELECT 1 FROM images AS i
                            WHERE i.image_id = s.image_id AND i.dataset = s.dataset
                        )
                        """
                    )
                    if image_errors is not None:
                        run_datasets = sorted({run["dataset"] for run in runs})
                        marks = ", ".join("?" for _ in run_datasets)
                        con.execute(
                            f"DELETE FROM image_errors WHERE dataset IN ({marks})", run_datasets
                        )
                        if image_errors:
                            con.executemany(
                                insert_errors,
                                [[e[c] for c in IMAGE_ERRORS.names] for e in image_errors],
                            )
                    if runs:  # rows written by hand (benchmarks, imports) log no run
                        con.executemany(
                            insert_runs,
                            [[run.get(c) for c in RUNS.names] for run in runs],
                        )
                    rows = con.execute(
                        "SELECT count(*) FROM activations WHERE model = ?", [model]
                    ).fetchone()
                    con.execute("COMMIT")
                except duckdb.Error:
                    rollback_quietly(con)
                    raise
                return int(rows[0]) if rows else 0

            try:
                return retry_transaction(commit)
            except BaseException:
                if adopt:  # never registered: it would only wait for `maintain` as an orphan
                    data_file.unlink(missing_ok=True)
                raise

    def _table_folder(self, table: str) -> Path:
        """Where DuckLake keeps a table's files on a local lake (`<data path>/main/<table>`),
        so a file placed there is recorded relative to the data path and moves with it."""
        return Path(self.location.data_path) / "main" / table

    def replace_rows(self, where: str, params: Sequence[Any], tables: dict[str, Any]) -> None:
        """For each table (name -> Arrow rows): delete the rows `where` selects, insert the new
        ones; all tables in one transaction, retried whole on a lock."""
        with self.connect() as con, self.write_lease():

            def commit() -> None:
                con.execute("BEGIN")
                try:
                    for table, rows in tables.items():
                        con.execute(f"DELETE FROM {table} WHERE {where}", list(params))
                        if rows.num_rows:
                            con.register("incoming", rows)
                            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                            con.unregister("incoming")
                    con.execute("COMMIT")
                except duckdb.Error:
                    rollback_quietly(con)
                    raise

            retry_transaction(commit)

    def replace_dataset_rows(self, datasets: Sequence[str], tables: dict[str, Any]) -> None:
        """Replace the listed datasets' rows in `images`, `image_labels`, `prompts`, ..."""
        self.replace_rows(f"dataset IN ({', '.join('?' for _ in datasets)})", datasets, tables)

    def replace_model_rows(self, table: str, model: str, rows: Any) -> int:
        """Replace one model's rows of an analysis table; returns the rows written."""
        self.replace_rows("model = ?", [model], {table: rows})
        return int(rows.num_rows)

    def config_of(self, model: str) -> str | None:
        """The config file the model's latest logged run came from (None when no run recorded
        one: before the `config` column existed, or rows written by hand)."""
        if not self.exists():
            return None
        with self.connect() as con:  # read-write: a warehouse from before `config` migrates
            row = con.execute(
                "SELECT config FROM runs WHERE model = ? AND config IS NOT NULL "
                "ORDER BY started_at DESC LIMIT 1",
                [model],
            ).fetchone()
        return row[0] if row else None

    def image_paths(self, dataset: str) -> list[str]:
        """The dataset's images as the `images` asset recorded them (paths, or object-store
        URIs on a shared warehouse), in a stable order."""
        rows = self.fetch_arrow(
            "SELECT DISTINCT path FROM images WHERE dataset = ? ORDER BY path", [dataset]
        )
        return rows.column(0).to_pylist()

    def dataset_rows(self, dataset: str) -> list[RowInput]:
        """The dataset's rows as extraction runs them: each row's images' files in order (as
        the `images` asset recorded them) and its own prompt, in the dataset's order."""
        table = self.fetch_arrow(
            """
            SELECT r.row_key, r.image_ids, r.prompt,
                   list_transform(r.image_ids, id -> paths[id]) AS paths
            FROM dataset_rows AS r,
                 (SELECT map(list(image_id), list(path)) AS paths
                  FROM (SELECT image_id, min(path) AS path FROM images
                        WHERE dataset = ? GROUP BY image_id))
            WHERE r.dataset = ?
            ORDER BY r.position
            """,
            [dataset, dataset],
        )
        return [
            RowInput(row["row_key"], tuple(row["image_ids"]), tuple(row["paths"]), row["prompt"])
            for row in table.to_pylist()
        ]

    def copy_into(self, target: WarehouseWrites) -> dict[str, int]:
        """Copy every table's rows into `target` (say, PostgreSQL + S3), replacing what it
        held, in one transaction. The target's own migrations make its schema, partitioning
        included; the rendered images are copied first and their paths rewritten. The source
        is only read. Returns rows per table."""
        source_files = self.location.files_root.rstrip("/") + "/"
        target_files = target.location.files_root.rstrip("/") + "/"
        moved = self._copy_image_files(source_files, target_files)
        with target.connect() as con, target.write_lease():
            self._attach(con, read_only=True, alias="source")
            tables = [
                row[0]
                for row in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_catalog = "
                    "'source' AND table_type = 'BASE TABLE' AND table_name <> 'lens_migrations' "
                    "ORDER BY table_name"
                ).fetchall()
            ]

            def commit() -> dict[str, int]:
                con.execute("BEGIN")
                try:
                    counts = {}
                    for table in tables:
                        con.execute(f"DELETE FROM {LAKE}.{table}")
                        rows, params = f"SELECT * FROM source.{table}", []
                        if table == "images" and moved:
                            rows = (
                                "SELECT * REPLACE (CASE WHEN starts_with(path, $1) THEN $2 || "
                                "path[length($1) + 1:] ELSE path END AS path) FROM source.images"
                            )
                            params = [source_files, target_files]
                        con.execute(f"INSERT INTO {LAKE}.{table} BY NAME {rows}", params)
                        counts[table] = con.execute(
                            f"SELECT count(*) FROM {LAKE}.{table}"
                        ).fetchone()[0]
                    con.execute("COMMIT")
                    return counts
                except duckdb.Error:
                    rollback_quietly(con)
                    raise

            return retry_transaction(commit)

    def _copy_image_files(self, source_root: str, target_root: str) -> int:
        """The rendered images under the source's files root, to the same place under the
        target's; returns how many."""
        if source_root == target_root:
            return 0
        paths = self.fetch_arrow("SELECT DISTINCT path FROM images").column(0).to_pylist()
        inside = [p for p in paths if p.startswith(source_root)]
        for path in inside:
            files.write_bytes(target_root + path[len(source_root) :], files.read_bytes(path))
        return len(inside)

    def maintain(
        self, older_than_hours: float = 0.0, orphans_older_than_hours: float = 24.0
    ) -> dict[str, int]:
        """Expire snapshots older than the cutoff and delete the files only they used; delete
        orphaned files (written by a commit that never landed) older than
        `orphans_older_than_hours`. Runs under the exclusive write lease: a live writer's
        uncommitted files are never taken for orphans, and the minimum age protects writers
        that hold no lease (other machines, plain DuckDB)."""
        with self.connect() as con, self.write_lease(exclusive=True):
            cutoff = _interval_ago(older_than_hours)
            expired = con.execute(
                f"CALL ducklake_expire_snapshots('{LAKE}', older_than => {cutoff})"
            ).fetchall()
            removed = con.execute(
                f"CALL ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)"
            ).fetchall()
            orphans = con.execute(
                f"CALL ducklake_delete_orphaned_files('{LAKE}', "
                f"older_than => {_interval_ago(orphans_older_than_hours)})"
            ).fetchall()
        return {
            "snapshots_expired": len(expired),
            "files_removed": len(removed) + len(orphans),
            "orphans_removed": len(orphans),
        }


def _lake_ready(staged: Path, model: str) -> bool:
    """Whether a stage file holds every column of `activations` (a stage made with its model),
    checked to be this model's rows: its `model` statistics say so in every row group."""
    metadata = pq.read_metadata(staged)
    names = metadata.schema.to_arrow_schema().names
    if "model" not in names:
        return False
    column = names.index("model")
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min != model or stats.max != model:
            raise WarehouseError(
                f"the stage at {staged.parent} holds another model's rows, not {model!r}: "
                "stage each model's rows in a stage made for it"
            )
    return True


def _lake_file_name(model: str) -> str:
    """A data file's name under its table's folder, as DuckLake names its own: the
    partition's folder, a fresh uuid."""
    return f"model={urllib.parse.quote(model, safe='')}/ducklake-{uuid.uuid4()}.parquet"


def _move(source: Path, target: Path) -> None:
    """Rename where both lie on one file system, else copy and remove."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.move(source, target)


def _insert_values(table: str, schema: pa.Schema) -> str:
    """`INSERT INTO table (every column) VALUES (?, ...)`, for rows given as parameters."""
    marks = ", ".join("?" for _ in schema.names)
    return f"INSERT INTO {table} ({', '.join(schema.names)}) VALUES ({marks})"


def _interval_ago(hours: float) -> str:
    if not hours >= 0:  # NaN too
        raise WarehouseError(f"an age must be zero or more hours, got {hours}")
    return f"now() - INTERVAL '{float(hours) * 3600:.0f} seconds'"
