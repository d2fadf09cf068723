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
    CheckedStatement,
    PatientConnection,
    WarehouseConnection,
    retry_transaction,
)
from lens_assets.resources.errors import QueryLimitError, ReadOnlyError, WarehouseError
from lens_assets.resources.location import DEFAULT_ROOT, WarehouseLocation, s3_secret
from lens_assets.resources.reads import fetch_projection
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

    def _fast_read(
        self, statement: CheckedStatement, params: Sequence[Any] | None
    ) -> pa.Table | None:
        """In `fetch_arrow`, one layer's rows, plainly projected, are read from the lake's files
        (`reads.fetch_projection`), at the speed every analysis reads."""
        return fetch_projection(self, statement, params)

    @property
    def sql_dir(self) -> Path:
        """This module's SQL_DIR, read at each open: a test (or tool) that points it at an
        older copy of sql/ opens the warehouse with that older schema."""
        return SQL_DIR
