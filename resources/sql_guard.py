"""Which SQL the read path runs: one reading statement over the warehouse's tables, nothing else.

DuckDB's own switches (a READ_ONLY attach, `enable_external_access = false`) do not make a
connection read-only by themselves: the SQLite scanner opens any file with its own I/O,
`ATTACH ... (TYPE sqlite)` reaches the catalog behind the lake, `USE`/`DETACH` swap the lake for
a writable one, and files under the allowed data folder stay readable and writable as files.
So every statement is parsed by DuckDB's own parser (on a connection that can touch no file:
`IMPORT DATABASE` reads files while it is parsed) and checked against allowlists before it
runs: statement kinds, table functions, and table names that are tables, not file paths.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import duckdb
from lens_assets.resources.errors import ReadOnlyError

LAKE = "lake"
# Reads only: the catalog's tables and views, generated rows, and the lake's own history.
READ_TABLE_FUNCTIONS = frozenset(
    {
        "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
        "duckdb_tables", "duckdb_views", "duckdb_columns", "duckdb_schemas", "duckdb_databases",
        "duckdb_constraints", "duckdb_indexes", "duckdb_types", "duckdb_functions",
        "duckdb_keywords", "duckdb_sequences",
        "pragma_table_info", "pragma_show", "pragma_version", "pragma_database_list",
        "pragma_collations",
        "ducklake_snapshots", "ducklake_table_info", "ducklake_list_files",
        "ducklake_table_changes", "ducklake_table_insertions", "ducklake_table_deletions",
        "ducklake_current_snapshot", "ducklake_last_committed_snapshot", "ducklake_options",
        "ducklake_settings",
        "nearest_images",  # sql/macros: a temporary table macro over `activations`
    }
)  # fmt: skip
# Catalogs a query may name: the lake, DuckDB's own system views, and the connection's
# temporary objects (the macros). The lake's metadata catalog (`__ducklake_metadata_lake`)
# and any other attached database are out of reach.
READ_CATALOGS = frozenset({"", LAKE, "system", "temp"})
_FILE_LIKE = re.compile(r"[/\\:*?\[\]{}]|\.[A-Za-z0-9]+$|^~")
_EXPLAIN = re.compile(r"(?is)^\s*explain\s+(?:analy[sz]e\s+)?(?:\([^)]*\)\s*)?")
_FIX = (
    "`lens sql` is read-only: it reads the warehouse's tables and views; change data with "
    "`lens extract`, `lens materialize` or `lens maintain`"
)

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parser_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory connection that parses only: it can open no file and load nothing."""
    global _parser
    if _parser is None:
        con = duckdb.connect()
        for setting in (
            "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false",
            "SET enable_external_access = false",
            "SET lock_configuration = true",
        ):
            con.execute(setting)
        _parser = con
    return _parser


def checked_statement(sql: str) -> str:
    """The one statement in `sql` that may run on the read path, as DuckDB will run it
    (a `PRAGMA table_info(...)` comes back as its SELECT); anything else raises
    ReadOnlyError naming what was refused."""
    with _parser_lock:
        con = _parser_connection()
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as error:
            raise ReadOnlyError(f"cannot run this query: {_first_line(error)}") from None
        if len(statements) != 1:
            kinds = ", ".join(s.type.name for s in statements) or "none"
            raise ReadOnlyError(
                f"lens sql runs exactly one statement per call; this text holds "
                f"{len(statements)} ({kinds}). Run them one at a time"
            )
        statement = statements[0]
        text = statement.query
        kind = statement.type
        if kind == duckdb.StatementType.EXPLAIN:
            _check_select(con, _EXPLAIN.sub("", text, count=1), "EXPLAIN")
        elif kind == duckdb.StatementType.SELECT:
            _check_select(con, text, "SELECT")
        else:
            raise ReadOnlyError(f"{_statement_name(text, kind)} statements are refused: {_FIX}")
        return text


def _check_select(con: duckdb.DuckDBPyConnection, text: str, outer: str) -> None:
    try:
        inner = con.extract_statements(text)
    except duckdb.Error as error:
        raise ReadOnlyError(f"cannot run this query: {_first_line(error)}") from None
    if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
        raise ReadOnlyError(f"{outer} may only wrap one SELECT here: {_FIX}")
    row = con.execute("SELECT json_serialize_sql(?)", [inner[0].query]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise ReadOnlyError(
            f"cannot check this {outer} statement ({tree.get('error_message', 'unknown form')}), "
            f"so it is refused: {_FIX}"
        )
    for node in _nodes(tree["statements"]):
        _check_node(node)


def _check_node(node: dict[str, Any]) -> None:
    kind = node.get("type")
    if kind == "TABLE_FUNCTION":
        function = node.get("function") or {}
        name = str(function.get("function_name", "")).lower()
        _check_catalog(str(function.get("catalog", "")), str(function.get("schema", "")))
        if name not in READ_TABLE_FUNCTIONS:
            raise ReadOnlyError(
                f"table function {name}() is refused: it reads files, reaches outside the "
                f"warehouse or changes state. {_FIX}"
            )
    elif kind in ("BASE_TABLE", "SHOW_REF"):
        _check_catalog(str(node.get("catalog_name", "")), str(node.get("schema_name", "")))
        name = str(node.get("table_name", "")).strip('"')
        if name and _FILE_LIKE.search(name):
            raise ReadOnlyError(
                f"{name!r} names a file, and the warehouse's files are reachable only as its "
                f"tables (activations, images, runs, ...). {_FIX}"
            )


def _check_catalog(catalog: str, schema: str) -> None:
    for part in (catalog, schema):
        if part.lower().startswith("__ducklake"):
            raise ReadOnlyError(f"the lake's metadata catalog {part!r} is refused. {_FIX}")
    if catalog.lower() not in READ_CATALOGS:
        raise ReadOnlyError(
            f"database {catalog!r} is refused: only the warehouse ({LAKE}) is attached. {_FIX}"
        )


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in the parse tree, depth first (CTEs and subqueries included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _statement_name(text: str, kind: duckdb.StatementType) -> str:
    words = text.strip().split(None, 1)
    return words[0].upper() if words else kind.name


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
