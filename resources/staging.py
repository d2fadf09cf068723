"""A run's rows spooled on local disk until the lake commit succeeds.

Inference and the lake transaction are decoupled: batches stream into a private DuckDB file
(memory stays flat however many images), and the commit (delete the partition's old rows,
insert the new ones) can be retried as a whole when a concurrent writer holds the catalog,
without recomputing anything.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb
import pyarrow as pa

ACTIVATION_ROWS = pa.schema(
    [
        ("image_id", pa.string()),
        ("prompt", pa.string()),
        ("layer", pa.string()),
        ("pooling", pa.string()),
        ("token_index", pa.int32()),
        ("token_role", pa.string()),
        ("tile", pa.int32()),
        ("dim", pa.int32()),
        ("vector", pa.list_(pa.float32())),
    ]
)
STAGED_ACTIVATIONS = ACTIVATION_ROWS.append(pa.field("dataset", pa.string()))
IMAGE_ROWS = pa.schema(
    [
        ("dataset", pa.string()),
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
FLUSH_BYTES = 64 * 1024 * 1024


def _ddl(table: str, schema: pa.Schema) -> str:
    types = {
        pa.string(): "VARCHAR",
        pa.int32(): "INTEGER",
        pa.list_(pa.float32()): "FLOAT[]",
    }
    columns = ", ".join(f"{f.name} {types[f.type]}" for f in schema)
    return f"CREATE TABLE {table} ({columns})"


class ActivationStage:
    """Collects Arrow batches and spills them into a per-run DuckDB file."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"run-{uuid.uuid4().hex}.duckdb"
        self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(str(self.path))
        self._con.execute(_ddl("activations", STAGED_ACTIVATIONS))
        self._con.execute(_ddl("images", IMAGE_ROWS))
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self.rows = 0

    def add_activations(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def add_images(self, rows: pa.Table) -> None:
        assert self._con is not None, "stage already closed"
        self._con.execute("INSERT INTO images BY NAME SELECT * FROM rows")

    def flush(self) -> None:
        if not self._pending:
            return
        assert self._con is not None, "stage already closed"
        batch = pa.concat_tables(self._pending)  # noqa: F841 - read by DuckDB below
        self._con.execute("INSERT INTO activations BY NAME SELECT * FROM batch")
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> Path:
        """Flush and close, leaving the file for the lake commit to read."""
        self.flush()
        if self._con is not None:
            self._con.close()
            self._con = None
        return self.path

    def discard(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        for suffix in ("", ".wal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def __enter__(self) -> ActivationStage:
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()
