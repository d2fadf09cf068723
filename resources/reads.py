"""Reading one layer's vectors at memory speed: the lake's files, not its SQL engine.

DuckDB reads a `FLOAT[]` column at 25-200 MB/s (it builds a list per row), and every query
on a DuckLake first reads its catalog (5-40 ms). The vectors are immutable Parquet files, so
the fast path asks the lake only which files make up its latest snapshot, and reads them
itself:

1. which lake and which latest snapshot, straight from the embedded SQLite catalog (a
   fraction of a millisecond);
2. that snapshot's data files and their delete files (`ducklake_list_files`), kept per lake
   and snapshot: when nothing was committed since the last read, nothing is asked again;
3. each file's footer (kept per path: a data file never changes), whose row-group statistics
   on model, dataset, layer and pooling skip every row group that cannot hold the layer;
4. the small key columns of the row groups left, minus the rows their delete file removes;
5. the chosen rows' vectors, found in the pages of the `vector` column (`parquet_floats`;
   each row group's page layout is kept, and the file stays mapped) and copied once, from
   where they lie in the file to their place in the matrix.

Rows come back sorted by `row_key`, as the SQL route (`sql_vectors`) returns them, and a
reader sees every snapshot committed before its read. Where the fast path cannot vouch for
its answer (a catalog in PostgreSQL, data on object storage, encrypted files, rows inlined in
the catalog, a file removed by maintenance while it was read), it takes that SQL route, which
gives the same rows; a page layout the page reader does not take is read through Arrow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lens_assets.resources.connection import (
    LAKE,
    CheckedStatement,
    WarehouseConnection,
    read_catalog,
)
from lens_assets.resources.parquet_floats import FloatLists, read_float_lists
from numpy.lib.stride_tricks import as_strided

log = logging.getLogger(__name__)

# The columns a selection filters on, in the order the writer sorts by.
KEYS = ("model", "dataset", "layer", "pooling", "prompt")


@dataclass(frozen=True)
class Selection:
    """One layer's pooled vectors of one model over one dataset (and, optionally, one
    prompt)."""

    model: str
    dataset: str
    layer: str
    pooling: str
    prompt: str | None = None

    def equalities(self) -> dict[str, str]:
        values = (self.model, self.dataset, self.layer, self.pooling, self.prompt)
        pairs = dict(zip(KEYS, values, strict=True))
        return {key: value for key, value in pairs.items() if value is not None}

    def __str__(self) -> str:
        return " / ".join(
            [self.model, self.dataset, self.layer, self.pooling]
            + ([f"prompt {self.prompt!r}"] if self.prompt is not None else [])
        )


@dataclass(frozen=True)
class Vectors:
    """The rows of a selection: `row_keys[i]`'s vector is `matrix[i]`, sorted by row key."""

    row_keys: pa.Array
    matrix: np.ndarray
    route: str  # "files" (the fast path) or "sql"


class _Fallback(Exception):
    """The fast path cannot vouch for this read: take the SQL route."""


# -- the public entry points --------------------------------------------------------------------


def read_vectors(
    source: WarehouseConnection | duckdb.DuckDBPyConnection,
    selection: Selection,
    *,
    fast: bool = True,
) -> Vectors:
    """The selection's vectors, sorted by row key. `source` is a warehouse (its cached
    read-only handle is used, so only the first read in a process pays the attach) or a
    connection already open on it. `fast=False` takes the SQL route (the reference)."""
    with _connection(source) as con:
        if fast:
            try:
                return _FILES.read(con, selection)
            except _Fallback as why:
                log.debug("%s: the SQL route (%s)", selection, why)
        return sql_vectors(con, selection)


def sql_vectors(con: duckdb.DuckDBPyConnection, selection: Selection) -> Vectors:
    """The SQL route: DuckDB reads the rows, Arrow turns them into one matrix."""
    equalities = selection.equalities()
    where = " AND ".join(f"{key} = ?" for key in equalities)
    table = con.execute(
        f"SELECT row_key, vector FROM activations WHERE {where} ORDER BY row_key",
        list(equalities.values()),
    ).to_arrow_table()
    keys = table.column("row_key").combine_chunks()
    _check_one_per_row(keys, selection)
    return Vectors(keys, list_column_to_matrix(table.column("vector"), str(selection)), "sql")


def list_column_to_matrix(column: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """A list<float> column as an (n, dim) float32 matrix, checking every row has one width."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = pc.list_value_length(column)
    bounds = pc.min_max(lengths)
    dim, widest = bounds["min"].as_py(), bounds["max"].as_py()
    if dim != widest:
        raise ValueError(f"{where} mixes vector widths {dim} and {widest}")
    flat = column.flatten()  # honours offsets, unlike .values on a sliced array
    if flat.null_count:
        raise ValueError(f"{where} has null elements inside its vectors")
    matrix = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return matrix.reshape(len(column), dim)


def clear_caches(pages_only: bool = False) -> None:
    """Forget what earlier reads kept: the page layouts and mapped files (`pages_only`: a
    layer not read before, in a process that knows the lake's files), or everything (file
    lists, footers, delete files too: a process's first read). For benchmarks."""
    global _FILES
    if pages_only:
        _FILES.forget_pages()
    else:
        _FILES = _FileReader()


def close_readers() -> None:
    """Close the cached read-only handles (tests; a process that moves its warehouse)."""
    with _HANDLES_LOCK:
        handles = list(_HANDLES.values())
        _HANDLES.clear()
    for handle in handles:
        handle.close()


# -- one read-only handle per warehouse and process ---------------------------------------------


class _Handle:
    """A read-only connection on one warehouse, opened once per process (the attach is the
    cost) and used by one read at a time."""

    def __init__(self, warehouse: WarehouseConnection) -> None:
        self.identity = _identity(warehouse)
        self.pid = os.getpid()
        self._stack = contextlib.ExitStack()
        self.con = self._stack.enter_context(warehouse.connect(read_only=True))
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        if self.pid != os.getpid():  # a forked child never closes its parent's connection
            return
        with self.lock:
            self.closed = True
            self._stack.close()


# The warehouses read last in this process, most recent last; a few stay open (each holds a
# DuckDB database with its extensions loaded).
_HANDLES: OrderedDict[tuple[str, str], _Handle] = OrderedDict()
_HANDLES_KEPT = 4
_HANDLES_LOCK = threading.Lock()


@contextlib.contextmanager
def _connection(
    source: WarehouseConnection | duckdb.DuckDBPyConnection,
) -> Iterator[duckdb.DuckDBPyConnection]:
    if not isinstance(source, WarehouseConnection):
        yield source
        return
    if getattr(source, "_session", None) is not None:  # a step's open read-write session
        with source.connect() as con:
            yield con
        return
    while True:
        handle = _handle(source)
        with handle.lock:
            if not handle.closed:  # else evicted between the lookup and the lock: look again
                yield handle.con
                return


def _handle(source: WarehouseConnection) -> _Handle:
    key = (source.location.catalog, source.location.data_path)
    closing = []
    with _HANDLES_LOCK:
        handle = _HANDLES.pop(key, None)
        if handle is not None and (
            handle.identity != _identity(source) or handle.pid != os.getpid()
        ):
            closing.append(handle)  # the catalog was replaced (a new warehouse at that path)
            handle = None
        if handle is None:
            handle = _Handle(source)
        _HANDLES[key] = handle
        while len(_HANDLES) > _HANDLES_KEPT:
            closing.append(_HANDLES.popitem(last=False)[1])
    for old in closing:
        old.close()
    return handle


def _identity(warehouse: WarehouseConnection) -> tuple[int, str] | None:
    """Which lake an embedded catalog holds: a warehouse removed and made again at the same
    path is another one, and a handle attached to the old one would read the old lake."""
    try:
        return _catalog_state(warehouse.location.catalog).lake
    except _Fallback:
        return None


# -- the fast path ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    path: str
    delete_file: str | None


@dataclass(frozen=True)
class _Footer:
    metadata: pq.FileMetaData
    columns: dict[str, int]  # top-level column -> its leaf index (the vector: its element)
    row_starts: tuple[int, ...]  # each row group's first row in the file


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class _FileReader:
    """The caches of the fast path, shared by every read in the process: file lists per
    (catalog, snapshot), footers per data file, deleted rows per delete file. Each is keyed
    by something immutable, so a cache entry never goes stale; only its size is bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files = _LRU(8)
        self._footers = _LRU(4096)
        self._deleted = _LRU(1024)
        self._layouts = _LRU(1024)
        self._maps = _LRU(16)  # mapped data files: a layer read again finds its pages mapped

    def read(self, con: duckdb.DuckDBPyConnection, selection: Selection) -> Vectors:
        catalog = _catalog_of(con)
        state = _catalog_state(catalog)  # read straight from the SQLite file: ~0.2 ms
        if state.inlined:
            raise _Fallback("rows inlined in the catalog")
        snapshot = state.latest
        with self._lock:
            files = self._files.get_or(
                (catalog, state.lake, snapshot), lambda: _list_files(con, snapshot)
            )
        pieces: list[_Piece] = []
        try:
            for file in files:
                pieces.extend(self._read_file(file, selection))
        except FileNotFoundError as error:  # maintenance removed it after an expiry
            raise _Fallback(f"a data file went away while read: {error}") from None
        return _assemble(pieces, selection)

    def _footer(self, path: str) -> _Footer:
        with self._lock:
            return self._footers.get_or(path, lambda: _read_footer(path))

    def forget_pages(self) -> None:
        with self._lock:
            self._layouts.clear()
            self._maps.clear()

    def layout(self, file: _Opened, footer: _Footer, index: int) -> FloatLists | None:
        """A row group's vector pages: where each list starts and where each page's floats
        lie in the file. Kept per (file, row group) where the floats are the file's own bytes,
        so a layer read again skips the page headers and levels; the floats are not kept."""
        with self._lock:
            known = self._layouts.get((file.path, index))
        if known is not None:
            return known
        leaf = footer.columns["vector"]
        group = footer.metadata.row_group(index)
        lists = read_float_lists(
            file.mapped, group.column(leaf), footer.metadata.schema.column(leaf)
        )
        if lists is not None and lists.page_bytes is not None:
            with self._lock:
                self._layouts[(file.path, index)] = replace(lists, pages=[])
        return lists

    def _deleted_rows(self, path: str) -> np.ndarray:
        with self._lock:
            return self._deleted.get_or(path, lambda: _read_deleted(path))

    def _read_file(
        self, file: _File, selection: Selection
    ) -> Iterator[tuple[pa.Array, np.ndarray]]:
        footer = self._footer(file.path)
        equalities = selection.equalities()
        if any(key not in footer.columns for key in [*equalities, "row_key", "vector"]):
            raise _Fallback(f"{file.path} lacks a column the read needs")
        groups = [
            index
            for index in range(footer.metadata.num_row_groups)
            if _may_hold(footer, index, equalities)
        ]
        if not groups:
            return
        deleted = self._deleted_rows(file.delete_file) if file.delete_file else None
        with self._lock:
            mapped = self._maps.get_or(file.path, lambda: _mapped(file.path))
        opened = _Opened(file.path, footer, list(equalities), mapped)
        try:
            for index in groups:
                keys = opened.parquet.read_row_group(index, columns=[*equalities, "row_key"])
                mask = _matches(keys, equalities)
                if deleted is not None and len(deleted):
                    rows = np.arange(keys.num_rows, dtype=np.int64) + footer.row_starts[index]
                    mask &= ~np.isin(rows, deleted)
                chosen = np.flatnonzero(mask)
                if not len(chosen):
                    continue
                chosen_keys = keys.column("row_key").combine_chunks().take(pa.array(chosen))
                lists = self.layout(opened, footer, index)
                yield _piece(opened, footer, index, chosen, chosen_keys, selection, lists)
        finally:
            opened.close()


_FILES = _FileReader()


_CATALOGS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _catalog_of(con: duckdb.DuckDBPyConnection) -> str:
    """The attach string of the connection's lake, asked once per connection."""
    with contextlib.suppress(TypeError):  # a plain DuckDB connection takes no weak reference
        if con in _CATALOGS:
            return _CATALOGS[con]
    row = con.execute(
        "SELECT path, type FROM duckdb_databases() WHERE database_name = ?", [LAKE]
    ).fetchone()
    if row is None or row[1] != "ducklake":
        raise _Fallback("no DuckLake attached as lake")
    with contextlib.suppress(TypeError):
        _CATALOGS[con] = str(row[0])
    return str(row[0])


@dataclass(frozen=True)
class _CatalogState:
    """What an embedded catalog says now: which lake it is (its oldest snapshot's id and time:
    a lake made again at the same path is another one, whatever its file), its latest
    snapshot, and whether it holds rows inlined in the catalog rather than in files."""

    lake: tuple[int, str]
    latest: int
    inlined: bool


def _catalog_state(catalog: str) -> _CatalogState:
    if not catalog.startswith("sqlite:"):
        raise _Fallback("not an embedded catalog")
    path = catalog.removeprefix("sqlite:")
    try:
        with read_catalog(path) as db:
            oldest = db.execute(
                "SELECT snapshot_id, CAST(snapshot_time AS TEXT) FROM ducklake_snapshot "
                "ORDER BY snapshot_id LIMIT 1"
            ).fetchone()
            latest = db.execute("SELECT max(snapshot_id) FROM ducklake_snapshot").fetchone()
            inlined = db.execute("SELECT count(*) FROM ducklake_inlined_data_tables").fetchone()
    except sqlite3.Error as error:
        raise _Fallback(f"cannot read the catalog {path}: {error}") from None
    if oldest is None or latest is None or latest[0] is None:
        raise _Fallback("no snapshot yet")
    return _CatalogState((int(oldest[0]), str(oldest[1])), int(latest[0]), bool(inlined[0]))


def _list_files(con: duckdb.DuckDBPyConnection, snapshot: int) -> list[_File]:
    try:
        rows = con.execute(
            f"""
            SELECT data_file, delete_file,
                   data_file_encryption_key IS NOT NULL OR delete_file_encryption_key IS NOT NULL
            FROM ducklake_list_files('{LAKE}', 'activations', snapshot_version => {int(snapshot)})
            """
        ).fetchall()
    except duckdb.Error as error:
        raise _Fallback(f"cannot list the lake's files: {error}") from None
    files = []
    for data_file, delete_file, encrypted in rows:
        if encrypted:
            raise _Fallback("encrypted data files")
        if "://" in data_file or (delete_file and "://" in delete_file):
            raise _Fallback("data files on object storage")
        files.append(_File(data_file, delete_file))
    return files


def _read_footer(path: str) -> _Footer:
    metadata = pq.read_metadata(path)
    schema = metadata.schema
    columns: dict[str, int] = {}
    for leaf in range(len(schema)):
        parts = schema.column(leaf).path.split(".")
        columns.setdefault(parts[0], leaf)
    starts, total = [], 0
    for index in range(metadata.num_row_groups):
        starts.append(total)
        total += metadata.row_group(index).num_rows
    return _Footer(metadata, columns, tuple(starts))


def _read_deleted(path: str) -> np.ndarray:
    """The row positions a DuckLake delete file removes from its data file."""
    table = pq.read_table(path, columns=["pos"])
    return np.sort(table.column("pos").to_numpy().astype(np.int64))


def _may_hold(footer: _Footer, index: int, equalities: dict[str, str]) -> bool:
    """Whether the row group's statistics leave room for rows with these values."""
    group = footer.metadata.row_group(index)
    if group.num_rows == 0:
        return False
    for key, value in equalities.items():
        stats = group.column(footer.columns[key]).statistics
        if stats is None or not stats.has_min_max:
            continue
        low, high = stats.min, stats.max
        if isinstance(low, bytes) or isinstance(high, bytes):
            continue  # statistics of an unknown logical type: no pruning on them
        if not (low <= value <= high):
            return False
    return True


def _matches(keys: pa.Table, equalities: dict[str, str]) -> np.ndarray:
    """Which rows hold these values; the key columns come dictionary-encoded, so each value
    is looked up once in a column's dictionary, not compared row by row."""
    mask = np.ones(keys.num_rows, dtype=bool)
    for key, value in equalities.items():
        column = keys.column(key)
        parts = []
        for chunk in column.chunks:
            if pa.types.is_dictionary(chunk.type):
                dictionary = chunk.dictionary.to_numpy(zero_copy_only=False)
                hits = np.flatnonzero(dictionary == value)
                indices = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                parts.append(np.isin(indices, hits))
            else:
                equal = pc.fill_null(pc.equal(chunk, pa.scalar(value, chunk.type)), False)
                parts.append(equal.to_numpy(zero_copy_only=False))
        mask &= np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    return mask


@dataclass(frozen=True)
class _Piece:
    """The chosen rows of one row group: their keys (in file order), their width, and where
    their vectors lie: at `offsets` in `rows_of_file` (the file's bytes seen as overlapping
    rows of `dim` floats, one starting at every byte), or else behind `gather`."""

    keys: pa.Array
    dim: int
    gather: Callable[[np.ndarray, np.ndarray], None]  # (out, dest): out[dest] = the vectors
    offsets: np.ndarray | None = None
    rows_of_file: np.ndarray | None = None
    path: str = ""


def _piece(
    file: _Opened,
    footer: _Footer,
    index: int,
    chosen: np.ndarray,
    keys: pa.Array,
    selection: Selection,
    lists: FloatLists | None,
) -> _Piece:
    """The chosen rows' vectors of one row group: from its pages (`lists`) where the page
    reader takes them, else through Arrow."""
    group = footer.metadata.row_group(index)
    if lists is None or len(lists.offsets) - 1 != group.num_rows:
        column = file.parquet.read_row_group(index, columns=["vector"]).column("vector")
        matrix = list_column_to_matrix(column.take(pa.array(chosen)), str(selection))

        def copy(out: np.ndarray, dest: np.ndarray) -> None:
            out[dest] = matrix

        return _Piece(keys, matrix.shape[1] if len(matrix) else 0, copy)
    widths = lists.widths(chosen)
    if (widths != widths[0]).any():
        raise ValueError(
            f"{selection} mixes vector widths {int(widths.min())} and {int(widths.max())}"
        )
    dim = int(widths[0])
    offsets = lists.file_offsets(chosen, dim) if dim else None
    if offsets is None and not lists.pages:  # a kept layout holds no floats: read them again
        lists = _pages(file, footer, index)
        if lists is None:
            raise _Fallback("a row group read differently the second time")
    return _Piece(
        keys,
        dim,
        lambda out, dest: lists.gather(chosen, out, dest),
        offsets,
        file.rows(dim) if offsets is not None else None,
        file.path,
    )


def _pages(file: _Opened, footer: _Footer, index: int) -> FloatLists | None:
    leaf = footer.columns["vector"]
    column = footer.metadata.row_group(index).column(leaf)
    return read_float_lists(file.mapped, column, footer.metadata.schema.column(leaf))


class _Opened:
    """A data file opened for one read: its bytes (mapped, and kept mapped for the next read
    of the same file), Arrow's reader for the keys over them."""

    def __init__(self, path: str, footer: _Footer, keys: Sequence[str], mapped: pa.Buffer) -> None:
        self.path = path
        self.mapped = mapped
        self.parquet = pq.ParquetFile(
            pa.BufferReader(mapped), metadata=footer.metadata, read_dictionary=list(keys)
        )
        self._bytes: np.ndarray | None = None

    def rows(self, dim: int) -> np.ndarray:
        """The file's bytes as overlapping rows of `dim` float32, one starting at each byte:
        `rows(dim)[offset]` is the vector whose first float lies at `offset`."""
        if self._bytes is None:
            self._bytes = np.frombuffer(self.mapped, dtype=np.uint8)
        width = 4 * dim
        count = max(len(self._bytes) - width + 1, 0)
        return as_strided(self._bytes, shape=(count, width), strides=(1, 1)).view("<f4")

    def close(self) -> None:
        self.parquet.close()


def _mapped(path: str) -> pa.Buffer:
    """The whole file, memory-mapped (a view: nothing is read until touched)."""
    with pa.memory_map(path) as file:
        return file.read_buffer()


def _assemble(pieces: Sequence[_Piece], selection: Selection) -> Vectors:
    """The pieces as one matrix sorted by row key, each vector copied once, straight from
    where it lies in its file to its place."""
    if not pieces:
        return Vectors(pa.array([], pa.string()), np.zeros((0, 0), dtype=np.float32), "files")
    dims = {piece.dim for piece in pieces}
    if len(dims) > 1:
        raise ValueError(f"{selection} mixes vector widths {min(dims)} and {max(dims)}")
    keys = pa.concat_arrays([piece.keys for piece in pieces])
    order = pc.sort_indices(keys).to_numpy()
    sorted_keys = keys.take(pa.array(order))
    _check_one_per_row(sorted_keys, selection, ordered=True)
    if len({piece.path for piece in pieces}) == 1 and all(
        piece.offsets is not None for piece in pieces
    ):  # one file, read where it lies: one gather in the final order
        offsets = np.concatenate([piece.offsets for piece in pieces])  # type: ignore[misc]
        return Vectors(sorted_keys, pieces[0].rows_of_file[offsets[order]], "files")  # type: ignore[index]
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order))
    out = np.empty((len(keys), dims.pop()), dtype=np.float32)
    start = 0
    for piece in pieces:
        dest = place[start : start + len(piece.keys)]
        if piece.offsets is not None and piece.rows_of_file is not None:
            out[dest] = piece.rows_of_file[piece.offsets]
        else:
            piece.gather(out, dest)
        start += len(piece.keys)
    return Vectors(sorted_keys, out, "files")


def _check_one_per_row(keys: pa.Array, selection: Selection, ordered: bool = False) -> None:
    """One vector per row key (a NULL key counts as a repeat, as it always has here); `ordered`
    keys need only compare with their neighbours."""
    if ordered:
        repeated = keys.null_count > 0 or (
            len(keys) > 1 and pc.any(pc.equal(keys[1:], keys[:-1])).as_py()
        )
    else:
        repeated = pc.count_distinct(keys).as_py() != len(keys)
    if repeated:
        raise ValueError(
            f"{selection} holds several vectors per row (`tokens` or `mean_per_image` rows); "
            "choose a pooling with one vector per row"
        )


# -- `lens sql`: a plain projection of one layer takes the fast path ----------------------------

# The columns a plain projection may return: the row key, the vector, and the filtered keys.
_PROJECTED = frozenset({"row_key", "vector", *KEYS})
_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


@dataclass(frozen=True)
class Projection:
    """`SELECT <columns> FROM activations WHERE model = .. AND dataset = .. AND layer = ..
    AND pooling = .. [AND prompt = ..] [ORDER BY row_key]`: one layer's rows, as the fast path
    reads them."""

    selection: Selection
    columns: tuple[tuple[str, str], ...]  # (output name, column)


def fetch_projection(
    warehouse: WarehouseConnection, statement: str, params: Sequence[Any] | None
) -> pa.Table | None:
    """The rows of a plain projection (see `Projection`) read by the fast path, sorted by row
    key; None for any other statement, or where the fast path cannot serve it (several rows
    per row key, a layout it does not take): the caller runs the statement as it is. A
    `CheckedStatement` (as `fetch_arrow` passes it) is not checked again; plain text is."""
    statement = CheckedStatement(statement)
    if "activations" not in statement.lower():
        return None
    projection = plain_projection(statement, params)
    if projection is None:
        return None
    try:
        with _connection(warehouse) as con:
            vectors = _FILES.read(con, projection.selection)
    except (_Fallback, ValueError):
        return None
    count = len(vectors.row_keys)
    constants = projection.selection.equalities()
    columns = {}
    for name, column in projection.columns:
        if column == "row_key":
            columns[name] = vectors.row_keys
        elif column == "vector":
            columns[name] = _list_array(vectors.matrix)
        else:
            columns[name] = pa.array([constants[column]] * count, pa.string())
    return pa.table(columns)


def plain_projection(statement: str, params: Sequence[Any] | None) -> Projection | None:
    """The statement as a `Projection`, or None where it is anything more (a join, another
    filter, a limit, an expression, another order)."""
    tree = _parse(statement)
    if tree is None or len(tree.get("statements", [])) != 1:
        return None
    node = tree["statements"][0].get("node", {})
    table = node.get("from_table") or {}
    if (
        node.get("type") != "SELECT_NODE"
        or (node.get("cte_map") or {}).get("map")
        or node.get("group_expressions")
        or node.get("group_sets")
        or node.get("having") is not None
        or node.get("sample") is not None
        or node.get("qualify") is not None
        or node.get("aggregate_handling") != "STANDARD_HANDLING"
        or table.get("type") != "BASE_TABLE"
        or table.get("table_name", "").lower() != "activations"
        or table.get("catalog_name", "").lower() not in ("", LAKE)
        or table.get("schema_name", "").lower() not in ("", "main")
        or table.get("sample") is not None
        or table.get("at_clause") is not None
        or table.get("column_name_alias")
    ):
        return None
    alias = str(table.get("alias") or "activations").lower()
    if not all(_ordered_by_row_key(modifier, alias) for modifier in node.get("modifiers", [])):
        return None
    columns = []
    for item in node.get("select_list", []):
        column = _column(item, alias)
        if column not in _PROJECTED:
            return None
        columns.append((item.get("alias") or column, column))
    equalities = _equalities(node.get("where_clause"), alias, list(params or []))
    if (
        not columns
        or equalities is None
        or not {"model", "dataset", "layer", "pooling"} <= set(equalities)
    ):
        return None
    return Projection(Selection(**equalities), tuple(columns))


def _parse(statement: str) -> dict[str, Any] | None:
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect()
            _parser.execute("SET enable_external_access = false")
        row = _parser.execute("SELECT json_serialize_sql(?)", [statement]).fetchone()
    tree = json.loads(row[0]) if row else None
    return None if tree is None or tree.get("error") else tree


def _column(expression: Any, alias: str) -> str | None:
    """The column a bare (or table-qualified) column reference names."""
    if not isinstance(expression, dict) or expression.get("class") != "COLUMN_REF":
        return None
    names = [str(name).lower() for name in expression.get("column_names", [])]
    if len(names) == 2 and names[0] == alias:
        names = names[1:]
    return names[0] if len(names) == 1 else None


def _ordered_by_row_key(modifier: dict[str, Any], alias: str) -> bool:
    orders = modifier.get("orders") or []
    return (
        modifier.get("type") == "ORDER_MODIFIER"
        and len(orders) == 1
        and orders[0].get("type") in ("ORDER_DEFAULT", "ASCENDING")
        and orders[0].get("null_order") in ("ORDER_DEFAULT", "NULLS LAST")
        and _column(orders[0].get("expression"), alias) == "row_key"
    )


def _equalities(where: Any, alias: str, params: list[Any]) -> dict[str, str] | None:
    """`key = value AND ...` over the key columns as {key: value}; None for anything else."""
    if not isinstance(where, dict):
        return None
    if where.get("type") == "CONJUNCTION_AND":
        found: dict[str, str] = {}
        for child in where.get("children", []):
            part = _equalities(child, alias, params)
            if part is None or set(part) & set(found):
                return None
            found.update(part)
        return found
    if where.get("type") != "COMPARE_EQUAL":
        return None
    for left, right in (
        (where.get("left"), where.get("right")),
        (where.get("right"), where.get("left")),
    ):
        column = _column(left, alias)
        if column in KEYS:
            value = _value(right, params)
            return None if value is None else {column: value}
    return None


def _value(expression: Any, params: list[Any]) -> str | None:
    if not isinstance(expression, dict):
        return None
    if expression.get("class") == "CONSTANT":
        value = expression.get("value") or {}
        if (value.get("type") or {}).get("id") == "VARCHAR" and not value.get("is_null"):
            return str(value.get("value"))
        return None
    if expression.get("class") == "PARAMETER":
        identifier = str(expression.get("identifier", ""))
        if identifier.isdigit() and 0 < int(identifier) <= len(params):
            value = params[int(identifier) - 1]
            return value if isinstance(value, str) else None
    return None


def _list_array(matrix: np.ndarray) -> pa.Array:
    """An (n, dim) matrix as a list<float> column, without copying the floats."""
    count, dim = matrix.shape if matrix.size else (len(matrix), 0)
    flat = np.ascontiguousarray(matrix).reshape(-1)
    offsets = pa.array(np.arange(0, count * dim + 1, max(dim, 1), dtype=np.int32)[: count + 1])
    return pa.ListArray.from_arrays(offsets, pa.array(flat, pa.float32()))
