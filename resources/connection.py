"""Opening the warehouse: attach the DuckLake, migrate it, lock a reader down, wait out locks.

One code path serves every size; only the attach string differs. The embedded default keeps
the catalog in SQLite (several local processes may write) and the data under the warehouse
root; a lab points the catalog at PostgreSQL and the data at object storage. The writes that
replace rows live in `writes`; `warehouse.Warehouse` is the two together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import duckdb
from duckdb_extensions import import_extension
from lens_assets.resources.errors import QueryLimitError, ReadOnlyError, WarehouseError
from lens_assets.resources.location import WarehouseLocation, quoted, s3_secret
from lens_assets.resources.schemas import LENS_MIGRATIONS, create_table
from lens_assets.resources.sql_guard import checked_statement

from lens_assets.data import files

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
LAKE = "lake"

# Writers on a SQLite catalog can collide; these messages mean "try the transaction again".
RETRYABLE = ("database is locked", "conflict", "could not serialize", "database busy")

T = TypeVar("T")


# Extensions whose signature DuckDB has checked in this process. Each new database checks every
# extension it loads again, hashing the whole file (~35 MB each: 0.1-0.2 s apiece on an idle
# core, the bulk of a warehouse attach); once one database has loaded a file with the check
# on, later databases load the same installed file without repeating it.
_VERIFIED: set[str] = set()


def new_database(extensions: Sequence[str]) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB database that will load `extensions`, checking their
    signatures only where this process has not yet (see `_VERIFIED`)."""
    if extensions and _VERIFIED.issuperset(extensions):
        return duckdb.connect(config={"allow_unsigned_extensions": True})
    return duckdb.connect()


def read_catalog(path: str) -> contextlib.closing[sqlite3.Connection]:
    """The embedded catalog's SQLite file, opened read-only (closed when the block ends): its
    own metadata rows, read without attaching the lake."""
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60))


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


class CheckedStatement(str):
    """A statement `sql_guard` let through, as DuckDB will run it. Made only by checking (a
    CheckedStatement given again comes back as it is), and any change to its text gives a plain
    str again: so a statement is checked once on its way, and a guarded connection runs this
    one without checking it a second time."""

    __slots__ = ()

    def __new__(cls, sql: str) -> Self:
        if isinstance(sql, cls):
            return sql
        return super().__new__(cls, checked_statement(sql))


_TRANSACTION_START = ("BEGIN", "START")
_TRANSACTION_END = ("COMMIT", "ROLLBACK", "ABORT", "END")


class PatientConnection:
    """A DuckDB connection whose statements wait out a locked catalog.

    A statement run on its own (autocommit) is retried whole when the catalog is locked,
    since it is its own transaction; inside an explicit BEGIN ... COMMIT nothing is retried
    here, because the caller's `retry_transaction` starts the whole transaction again.
    A `guarded` connection (every read-only one, once set up) runs only statements that
    `sql_guard` lets through, whoever sends them: `lens sql`, an analysis or the UI (each
    checked once: a `CheckedStatement` already was).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._in_transaction = False
        self.guarded = False

    def _checked(self, sql: str) -> str:
        return CheckedStatement(sql) if self.guarded else sql

    def execute(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        sql = self._checked(sql)
        word = sql.lstrip().split(None, 1)[0].upper().rstrip(";") if sql.strip() else ""
        if word in _TRANSACTION_START:
            self._in_transaction = True
        elif word in _TRANSACTION_END:
            self._in_transaction = False
        if self._in_transaction or word in _TRANSACTION_END:
            return self._con.execute(sql, params)
        return retry_transaction(lambda: self._con.execute(sql, params))

    def sql(self, query: str, *args: Any, **kwargs: Any) -> duckdb.DuckDBPyRelation:
        return self._con.sql(self._checked(query), *args, **kwargs)

    query = sql

    def executemany(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        return self._con.executemany(self._checked(sql), params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


class WarehouseConnection:
    """Opens DuckDB connections on the DuckLake, applying `sql/*.sql` on first write access."""

    def __init__(self, location: WarehouseLocation | None = None) -> None:
        self.location = location or WarehouseLocation.resolve()
        self._session: duckdb.DuckDBPyConnection | None = None

    @classmethod
    def at(cls, root: str | Path | None = None) -> Self:
        return cls(WarehouseLocation.resolve(root))

    @property
    def root(self) -> Path:
        return self.location.root

    @property
    def sql_dir(self) -> Path:
        """The migrations and macros this warehouse is opened with (`Warehouse` reads its
        module's SQL_DIR here, so pointing that at an older folder gives an older schema)."""
        return SQL_DIR

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
        options = [f"DATA_PATH {quoted(self.location.data_path)}", "DATA_INLINING_ROW_LIMIT 0"]
        if read_only:
            options.append("READ_ONLY")
        if override_data_path:
            options.append("OVERRIDE_DATA_PATH true")
        attach = (
            f"ATTACH IF NOT EXISTS {quoted('ducklake:' + self.location.catalog)} AS {alias} "
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
        _VERIFIED.update(self.location.extensions)  # loaded by the attach, signatures checked
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
            with read_catalog(catalog) as db:
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
            con = new_database(self.location.extensions)
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
        con = new_database(self.location.extensions)
        patient = PatientConnection(con)
        try:
            try:
                self._attach(con, read_only)
            except _Moved as moved:
                self._attach(con, read_only, override_data_path=not self._rehome(moved.old))
            if not read_only:
                self._migrate(patient)
            for macro in sorted((self.sql_dir / "macros").glob("*.sql")):
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
            f"SET allowed_directories = [{quoted(allowed)}]",
            "SET enable_external_access = false",
        ]
        if memory_limit:
            settings.append(f"SET memory_limit = {quoted(memory_limit)}")
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
    def session(self) -> Iterator[Self]:
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

    @contextmanager
    def session_ahead(self) -> Iterator[Callable[[], None]]:
        """`session`, opened on a thread while the caller computes, so a commit at the end
        finds the lake attached (an attach costs 0.1-0.3 s). Yields `ready`, which waits for
        it and raises its error; until then, calls open their own connections. Inside an open
        session there is nothing to open."""
        if self._session is not None:
            yield lambda: None
            return
        stack = contextlib.ExitStack()
        with ThreadPoolExecutor(1, thread_name_prefix="lens-attach") as pool:
            opened = pool.submit(stack.enter_context, self.session())

            def ready() -> None:
                opened.result()

            try:
                yield ready
            finally:
                if opened.exception() is None:  # waits for it; a failed attach holds nothing
                    stack.close()

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Apply every `sql/NNN_*.sql` not yet recorded: all in one transaction (each
        transaction is a catalog commit, and a fresh warehouse has over twenty scripts: one
        commit instead takes it from seconds to a fraction), else, where that fails, each in
        its own, so the error names the script."""
        retry_transaction(lambda: con.execute(create_table("lens_migrations", LENS_MIGRATIONS)))
        # Reading the catalog's latest snapshot meets the same lock as a commit does.
        applied = retry_transaction(
            lambda: {row[0] for row in con.execute("SELECT name FROM lens_migrations").fetchall()}
        )
        pending = [
            script
            for script in sorted(self.sql_dir.glob("[0-9][0-9][0-9]_*.sql"))
            if script.name not in applied
        ]
        if not pending:
            return

        try:
            retry_transaction(lambda: _apply(con, pending))
            return
        except duckdb.Error as error:
            log.info("migrating in one transaction failed (%s); one by one", _first_line(error))
        for script in pending:
            retry_transaction(lambda script=script: _apply(con, [script]))

    def fetch_arrow(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        memory_limit: str | None = None,
    ) -> pa.Table:
        """Run one reading statement and return a pyarrow Table.

        The statement is checked first (`sql_guard`: one SELECT-like statement over the
        warehouse's tables), once: then read by `_fast_read` where that serves it, else run on
        a locked-down read-only connection, interrupted after `timeout` seconds and held to
        `memory_limit` (e.g. "4GiB") when they are given."""
        statement = CheckedStatement(sql)  # also inside a step's read-write session
        fast = self._fast_read(statement, params)
        if fast is not None:
            return fast
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

    def _fast_read(
        self, statement: CheckedStatement, params: Sequence[Any] | None
    ) -> pa.Table | None:
        """The statement's rows read without DuckDB, or None to run it there: here always None
        (`Warehouse` reads one layer's plain projection from the lake's files)."""
        return None


def _apply(con: duckdb.DuckDBPyConnection, scripts: Sequence[Path]) -> None:
    """Run `scripts` and record each in lens_migrations, in one transaction (rolled back
    whole on an error), skipping any that another process recorded since they were listed."""
    con.execute("BEGIN")
    try:
        done = {row[0] for row in con.execute("SELECT name FROM lens_migrations").fetchall()}
        for script in scripts:
            if script.name not in done:
                con.execute(script.read_text())
                con.execute("INSERT INTO lens_migrations VALUES (?, now())", [script.name])
        con.execute("COMMIT")
    except duckdb.Error:
        rollback_quietly(con)
        raise


class _Moved(Exception):
    """An embedded warehouse whose catalog still names the folder it was made in."""

    def __init__(self, old: str) -> None:
        super().__init__(old)
        self.old = old


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # after a failed COMMIT none is active
        con.execute("ROLLBACK")
