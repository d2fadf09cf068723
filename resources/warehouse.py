"""The activation warehouse: a DuckLake (SQL catalog + Parquet data files) opened by DuckDB.

One code path serves every size; only the attach string differs. The embedded default keeps
the catalog in SQLite (several local processes may write) and the data under the warehouse
root; a lab points the catalog at PostgreSQL and the data at object storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import duckdb
from duckdb_extensions import import_extension
from lens_assets.resources.errors import QueryLimitError, ReadOnlyError, WarehouseError
from lens_assets.resources.sql_guard import checked_statement

from lens_assets.data import files

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
DEFAULT_ROOT = Path("warehouse")
LAKE = "lake"

# Writers on a SQLite catalog can collide; these messages mean "try the transaction again".
RETRYABLE = ("database is locked", "conflict", "could not serialize", "database busy")

T = TypeVar("T")

RUN_COLUMNS = (
    "model",
    "dataset",
    "device",
    "dtype",
    "batch_size",
    "n_images",
    "seconds",
    "per_image_seconds",
    "peak_memory_bytes",
    "started_at",
    "oom_retries",
    "requested_batch_size",
    "config",
)


__all__ = ["QueryLimitError", "ReadOnlyError", "Warehouse", "WarehouseError", "WarehouseLocation"]


def _is_retryable(error: Exception) -> bool:
    text = str(error).lower()
    return any(marker in text for marker in RETRYABLE)


def retry_transaction(work: Callable[[], T], attempts: int = 30, base_delay: float = 0.05) -> T:
    """Run `work` (which opens and commits its own transaction) until it commits.

    After a failed COMMIT DuckLake has no active transaction, so the whole unit of work is
    started again rather than resumed.
    """
    for attempt in range(attempts):
        try:
            return work()
        except duckdb.Error as error:
            if not _is_retryable(error) or attempt == attempts - 1:
                raise
            log.info("the catalog is busy (%s); retry %d", str(error).splitlines()[0], attempt + 1)
            time.sleep(base_delay * (1.5**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


_TRANSACTION_START = ("BEGIN", "START")
_TRANSACTION_END = ("COMMIT", "ROLLBACK", "ABORT", "END")


class PatientConnection:
    """A DuckDB connection whose statements wait out a locked catalog.

    A statement run on its own (autocommit) is retried whole when the catalog is locked,
    since it is its own transaction; inside an explicit BEGIN ... COMMIT nothing is retried
    here, because the caller's `retry_transaction` starts the whole transaction again.
    A `guarded` connection (every read-only one, once set up) runs only statements that
    `sql_guard` lets through, whoever sends them: `lens sql`, an analysis or the UI.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._in_transaction = False
        self.guarded = False

    def execute(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        if self.guarded:
            sql = checked_statement(sql)
        word = sql.lstrip().split(None, 1)[0].upper().rstrip(";") if sql.strip() else ""
        if word in _TRANSACTION_START:
            self._in_transaction = True
        elif word in _TRANSACTION_END:
            self._in_transaction = False
        if self._in_transaction or word in _TRANSACTION_END:
            return self._con.execute(sql, params)
        return retry_transaction(lambda: self._con.execute(sql, params))

    def sql(self, query: str, *args: Any, **kwargs: Any) -> duckdb.DuckDBPyRelation:
        return self._con.sql(checked_statement(query) if self.guarded else query, *args, **kwargs)

    query = sql

    def executemany(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        if self.guarded:
            sql = checked_statement(sql)
        return self._con.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


@dataclass(frozen=True)
class WarehouseLocation:
    """Where the catalog and the data live."""

    root: Path
    catalog: str  # e.g. "sqlite:/abs/warehouse/catalog.sqlite" or "postgres:dbname=lens ..."
    data_path: str  # e.g. "/abs/warehouse/data/" or "s3://bucket/lens/"

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> WarehouseLocation:
        """`--warehouse` beats `LENS_WAREHOUSE`, which beats `./warehouse`; `LENS_CATALOG` and
        `LENS_DATA_PATH` move the catalog and the data elsewhere (scale-out)."""
        chosen = Path(root or os.environ.get("LENS_WAREHOUSE") or DEFAULT_ROOT).resolve()
        catalog = os.environ.get("LENS_CATALOG") or f"sqlite:{chosen / 'catalog.sqlite'}"
        data_path = os.environ.get("LENS_DATA_PATH") or f"{chosen / 'data'}/"
        return cls(chosen, catalog, data_path)

    @property
    def is_local(self) -> bool:
        return self.catalog.startswith("sqlite:") and "://" not in self.data_path

    @property
    def is_embedded(self) -> bool:
        """The default layout: catalog and data inside the root, so the root may move."""
        return (
            self.catalog == f"sqlite:{self.root / 'catalog.sqlite'}"
            and self.data_path == f"{self.root / 'data'}/"
        )

    @property
    def extensions(self) -> list[str]:
        needed = ["ducklake"]
        if self.catalog.startswith("sqlite:"):
            needed.append("sqlite_scanner")
        elif self.catalog.startswith("postgres:"):
            needed.append("postgres_scanner")
        if "://" in self.data_path:
            needed.append("httpfs")
        return needed

    @property
    def files_root(self) -> str:
        """Where files every worker must read (rendered dataset images) go: beside the data
        folder, on the same store (the root locally; the bucket prefix on object storage)."""
        return files.parent(self.data_path)

    @property
    def models_dir(self) -> Path:
        """Where tiny checkpoints are built (`model_path: tiny:<architecture>`)."""
        return self.root / "models"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"


class Warehouse:
    """Opens DuckDB connections on the DuckLake, applying `sql/*.sql` on first write access."""

    def __init__(self, location: WarehouseLocation | None = None) -> None:
        self.location = location or WarehouseLocation.resolve()
        self._session: duckdb.DuckDBPyConnection | None = None

    @classmethod
    def at(cls, root: str | Path | None = None) -> Warehouse:
        return cls(WarehouseLocation.resolve(root))

    @property
    def root(self) -> Path:
        return self.location.root

    def _attach(
        self,
        con: duckdb.DuckDBPyConnection,
        read_only: bool,
        alias: str = LAKE,
        override_data_path: bool = False,
    ) -> None:
        for name in self.location.extensions:
            try:
                import_extension(name, con=con)
            except ImportError:
                raise WarehouseError(
                    f"the warehouse at {self.location.catalog} / {self.location.data_path} "
                    f'needs DuckDB\'s {name} extension: pip install -e ".[scale]"'
                ) from None
        if self.location.data_path.startswith("s3://"):
            con.execute(s3_secret(os.environ))
        options = [f"DATA_PATH {_quoted(self.location.data_path)}", "DATA_INLINING_ROW_LIMIT 0"]
        if read_only:
            options.append("READ_ONLY")
        if override_data_path:
            options.append("OVERRIDE_DATA_PATH true")
        attach = (
            f"ATTACH IF NOT EXISTS {_quoted('ducklake:' + self.location.catalog)} AS {alias} "
            f"({', '.join(options)})"
        )
        try:
            retry_transaction(lambda: con.execute(attach))
        except duckdb.Error as error:
            if "does not match existing data path" not in str(error):
                raise
            stored = self.stored_data_path()
            if stored is not None and "://" not in stored:
                raise _Moved(stored) from None  # an embedded warehouse in a new folder
            raise WarehouseError(
                f"the catalog {self.location.catalog} keeps its data elsewhere, not at "
                f"{self.location.data_path} ({_first_line(error)}): set LENS_DATA_PATH to the "
                "catalog's data path (or unset it for an embedded warehouse, which follows "
                "its folder when moved)"
            ) from None
        if alias == LAKE:
            retry_transaction(lambda: con.execute(f"USE {LAKE}"))

    def exists(self) -> bool:
        if self.location.catalog.startswith("sqlite:"):
            return Path(self.location.catalog.removeprefix("sqlite:")).is_file()
        return True

    def stored_data_path(self) -> str | None:
        """The data path an embedded catalog recorded when it was created or last re-homed
        (None when the catalog is not a local SQLite file or holds no lake yet)."""
        if not self.location.is_embedded or not self.exists():
            return None
        catalog = self.location.catalog.removeprefix("sqlite:")
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=60)
            ) as db:
                row = db.execute(
                    "SELECT value FROM ducklake_metadata WHERE key = 'data_path'"
                ).fetchone()
        except sqlite3.Error:
            return None
        return str(row[0]) if row else None

    def _rehome(self, old_data_path: str) -> bool:
        """Make a moved embedded warehouse's catalog name its new home: first the rendered
        images' paths (a lake transaction), then the stored data path (the catalog's own
        metadata row, written through SQLite since DuckDB writes one database per
        transaction). Redoing the first after a crash between them changes nothing.
        Returns False where the catalog cannot be written (a read-only copy): it is then
        read where it is, as it is."""
        old_root = files.parent(old_data_path).rstrip("/") + "/"
        new_root = self.location.files_root.rstrip("/") + "/"
        try:
            con = duckdb.connect()
            try:
                self._attach(con, read_only=False, override_data_path=True)
                PatientConnection(con).execute(
                    "UPDATE images SET path = ? || path[length(?) + 1:] WHERE starts_with(path, ?)",
                    [new_root, old_root, old_root],
                )
            finally:
                con.close()
            catalog = self.location.catalog.removeprefix("sqlite:")
            with contextlib.closing(sqlite3.connect(catalog, timeout=600)) as db, db:
                db.execute(
                    "UPDATE ducklake_metadata SET value = ? WHERE key = 'data_path'",
                    [self.location.data_path],
                )
        except (duckdb.Error, sqlite3.Error, OSError) as error:
            log.warning("cannot record the warehouse's move to %s (%s); reading it as is",
                        new_root, error)  # fmt: skip
            return False
        log.warning("the warehouse moved from %s to %s: its catalog now says so", old_root,
                    new_root)  # fmt: skip
        return True

    @contextmanager
    def connect(
        self, read_only: bool = False, memory_limit: str | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection with the lake attached as the default database.

        Every statement that can meet a locked catalog (the attach, migrations, macros, each
        read) waits it out. A read-only connection is locked down: it reads the lake's tables
        and nothing else (see `lock_down`), and `fetch_arrow` runs only checked statements.
        """
        if self._session is not None:
            yield self._session
            return
        if read_only and not self.exists():
            raise WarehouseError(
                f"no warehouse at {self.root}: run `lens demo` or `lens extract CONFIG` first, "
                "or point --warehouse / LENS_WAREHOUSE at an existing one"
            )
        if not read_only and self.location.is_local:
            Path(self.location.data_path).mkdir(parents=True, exist_ok=True)
        con = duckdb.connect()
        patient = PatientConnection(con)
        try:
            try:
                self._attach(con, read_only)
            except _Moved as moved:
                self._attach(con, read_only, override_data_path=not self._rehome(moved.old))
            if not read_only:
                self._migrate(patient)
            for macro in sorted((SQL_DIR / "macros").glob("*.sql")):
                patient.execute(macro.read_text())
            if read_only:
                self.lock_down(con, memory_limit)
                patient.guarded = True
            yield patient  # type: ignore[misc]
        finally:
            con.close()

    def lock_down(self, con: duckdb.DuckDBPyConnection, memory_limit: str | None = None) -> None:
        """No file but the lake's data is reachable, nothing spills to disk, no extension
        loads, and no setting changes after this (memory and threads included)."""
        allowed = self.location.data_path
        settings = [
            "SET temp_directory = ''",  # nothing spills to disk (DuckDB's default is ./.tmp)
            "SET python_enable_replacements = false",  # no Python variables as tables
            "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false",
            "SET allow_community_extensions = false",
            f"SET allowed_directories = [{_quoted(allowed)}]",
            "SET enable_external_access = false",
        ]
        if memory_limit:
            settings.append(f"SET memory_limit = {_quoted(memory_limit)}")
        for setting in settings:
            try:
                con.execute(setting)
            except duckdb.Error:
                if "memory_limit" in setting:
                    raise WarehouseError(
                        f"memory limit {memory_limit!r} is not a size DuckDB reads; write e.g. "
                        "4GiB or 512MB"
                    ) from None
                raise
        con.execute("SET lock_configuration = true")

    @contextmanager
    def session(self) -> Iterator[Warehouse]:
        """Share one read-write connection among every call inside the block (one connection
        per Dagster step)."""
        if self._session is not None:
            yield self
            return
        with self.connect() as con:
            self._session = con
            try:
                yield self
            finally:
                self._session = None

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Apply each `sql/NNN_*.sql` not yet recorded, each in its own transaction."""
        retry_transaction(
            lambda: con.execute(
                "CREATE TABLE IF NOT EXISTS lens_migrations (name VARCHAR, applied_at TIMESTAMPTZ)"
            )
        )
        # Reading the catalog's latest snapshot meets the same lock as a commit does.
        applied = retry_transaction(
            lambda: {row[0] for row in con.execute("SELECT name FROM lens_migrations").fetchall()}
        )
        for script in sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql")):
            if script.name in applied:
                continue

            def apply(script: Path = script) -> None:
                con.execute("BEGIN")
                try:
                    done = con.execute(
                        "SELECT count(*) FROM lens_migrations WHERE name = ?", [script.name]
                    ).fetchone()
                    if done and done[0]:
                        con.execute("ROLLBACK")
                        return
                    con.execute(script.read_text())
                    con.execute("INSERT INTO lens_migrations VALUES (?, now())", [script.name])
                    con.execute("COMMIT")
                except duckdb.Error:
                    _rollback_quietly(con)
                    raise

            retry_transaction(apply)

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

    def fetch_arrow(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        memory_limit: str | None = None,
    ):
        """Run one reading statement and return a pyarrow Table.

        The statement is checked first (`sql_guard`: one SELECT-like statement over the
        warehouse's tables), then run on a locked-down read-only connection, interrupted after
        `timeout` seconds and held to `memory_limit` (e.g. "4GiB") when they are given."""
        statement = checked_statement(sql)  # also inside a step's read-write session
        with self.connect(read_only=True, memory_limit=memory_limit) as con:
            timer = threading.Timer(timeout, con.interrupt) if timeout else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                return con.execute(statement, params or []).to_arrow_table()
            except duckdb.InterruptException:
                raise QueryLimitError(
                    f"the query ran past its time limit of {timeout:g} s and was stopped; "
                    "narrow it (WHERE, LIMIT) or raise the limit (lens sql --timeout SECONDS)"
                ) from None
            except duckdb.OutOfMemoryException:
                limit = memory_limit or "DuckDB's default"
                raise QueryLimitError(
                    f"the query needs more memory than its limit ({limit}); narrow it (WHERE, "
                    "LIMIT, fewer columns) or raise the limit (lens sql --memory-limit SIZE)"
                ) from None
            except duckdb.InvalidInputException as error:
                if "read-only" in str(error) or "Cannot execute statement" in str(error):
                    raise ReadOnlyError(
                        f"the warehouse is opened read-only here, so this statement cannot run "
                        f"({error}); `lens sql` only reads. Change data with `lens extract` or "
                        "`lens maintain`"
                    ) from None
                raise
            finally:
                if timer is not None:
                    timer.cancel()

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
        them). Returns the model's row count after the commit."""
        scope, scope_params = "model = ?", [model]
        if datasets is not None:
            scope += f" AND dataset IN ({', '.join('?' for _ in datasets)})"
            scope_params += list(datasets)
        columns = ", ".join(RUN_COLUMNS)
        placeholders = ", ".join("?" for _ in RUN_COLUMNS)
        with self.connect() as con, self.write_lease():
            activations = _quoted(stage / "activations.parquet")
            images = _quoted(stage / "images.parquet")

            def commit() -> int:
                con.execute("BEGIN")
                try:
                    con.execute(f"DELETE FROM activations WHERE {scope}", scope_params)
                    con.execute(
                        f"""
                        INSERT INTO activations BY NAME
                        SELECT ? AS model, ? AS architecture, dataset, image_id, prompt, layer,
                               pooling, token_index, token_role, tile, dim, vector
                        FROM read_parquet({activations})
                        ORDER BY dataset, layer, pooling, image_id, token_index
                        """,
                        [model, architecture],
                    )
                    con.execute(
                        f"""
                        INSERT INTO images
                        SELECT DISTINCT s.image_id, s.dataset, s.path, s.width, s.height, NULL
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
                                "INSERT INTO image_errors (dataset, path, error) VALUES (?, ?, ?)",
                                [[e["dataset"], e["path"], e["error"]] for e in image_errors],
                            )
                    if runs:  # rows written by hand (benchmarks, imports) log no run
                        con.executemany(
                            f"INSERT INTO runs ({columns}) VALUES ({placeholders})",
                            [[run.get(c) for c in RUN_COLUMNS] for run in runs],
                        )
                    rows = con.execute(
                        "SELECT count(*) FROM activations WHERE model = ?", [model]
                    ).fetchone()
                    con.execute("COMMIT")
                except duckdb.Error:
                    _rollback_quietly(con)
                    raise
                return int(rows[0]) if rows else 0

            return retry_transaction(commit)

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
                    _rollback_quietly(con)
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

    def copy_into(self, target: Warehouse) -> dict[str, int]:
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
                    _rollback_quietly(con)
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


class _Moved(Exception):
    """An embedded warehouse whose catalog still names the folder it was made in."""

    def __init__(self, old: str) -> None:
        super().__init__(old)
        self.old = old


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _interval_ago(hours: float) -> str:
    if not hours >= 0:  # NaN too
        raise WarehouseError(f"an age must be zero or more hours, got {hours}")
    return f"now() - INTERVAL '{float(hours) * 3600:.0f} seconds'"


def s3_secret(env: Mapping[str, str]) -> str:
    """DuckDB's S3 secret from the standard AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL): credentials live
    in the environment, never in a file of the repository."""
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(name)]
    if missing:
        raise WarehouseError(
            f"the warehouse data path is on S3 but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: export the bucket's credentials"
        )
    options = {
        "KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "SECRET": env["AWS_SECRET_ACCESS_KEY"],
        "REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if env.get("AWS_SESSION_TOKEN"):
        options["SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:  # MinIO, Ceph, moto...: host:port, path-style URLs
        parts = urlsplit(endpoint)
        options["ENDPOINT"] = parts.netloc or parts.path
        options["URL_STYLE"] = "path"
        options["USE_SSL"] = "true" if parts.scheme != "http" else "false"
    settings = ", ".join(
        f"{key} {value if key == 'USE_SSL' else _quoted(value)}" for key, value in options.items()
    )
    return f"CREATE OR REPLACE SECRET lens_s3 (TYPE s3, {settings})"


def _quoted(path: Path | str) -> str:
    """A path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # after a failed COMMIT none is active
        con.execute("ROLLBACK")
