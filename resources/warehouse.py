"""The activation warehouse: a DuckLake (SQL catalog + Parquet data files) opened by DuckDB.

`Warehouse` is one object made of two jobs, each in its own module: opening it (`connection`:
attach, migrations, the read-only lock-down, waiting out a locked catalog) and changing its
rows (`writes`: partition replacements under the write lease, copies, maintenance). Where it
lives is `location`; its tables' columns are `schemas`. The names other modules have always
imported from here still come from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from lens_assets.resources.connection import (
    LAKE,
    RETRYABLE,
    SQL_DIR,
    PatientConnection,
    WarehouseConnection,
    retry_transaction,
)
from lens_assets.resources.errors import QueryLimitError, ReadOnlyError, WarehouseError
from lens_assets.resources.location import DEFAULT_ROOT, WarehouseLocation, s3_secret
from lens_assets.resources.reads import fetch_projection
from lens_assets.resources.sql_guard import checked_statement
from lens_assets.resources.writes import WarehouseWrites

__all__ = [
    "DEFAULT_ROOT",
    "LAKE",
    "RETRYABLE",
    "SQL_DIR",
    "PatientConnection",
    "QueryLimitError",
    "ReadOnlyError",
    "Warehouse",
    "WarehouseConnection",
    "WarehouseError",
    "WarehouseLocation",
    "retry_transaction",
    "s3_secret",
]


class Warehouse(WarehouseWrites):
    """Opens DuckDB connections on the DuckLake, applying `sql/*.sql` on first write access,
    and replaces its rows whole (see `connection` and `writes`)."""

    def fetch_arrow(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        memory_limit: str | None = None,
    ) -> pa.Table:
        """`WarehouseConnection.fetch_arrow`, but one layer's rows, plainly projected, are read
        from the lake's files (`reads.fetch_projection`), at the speed every analysis reads."""
        projected = fetch_projection(self, checked_statement(sql), params)
        if projected is not None:
            return projected
        return super().fetch_arrow(sql, params, timeout=timeout, memory_limit=memory_limit)

    @property
    def sql_dir(self) -> Path:
        """This module's SQL_DIR, read at each open: a test (or tool) that points it at an
        older copy of sql/ opens the warehouse with that older schema."""
        return SQL_DIR
