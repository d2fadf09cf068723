"""Rows as text for a terminal, CSV or JSON: what `lens sql`, `lens models` and `lens demo`
print."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any


def format_table(columns: Sequence[str], rows: Sequence[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, default=str, indent=None) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")  # LF, as DuckDB's CLI writes
        writer.writerow(columns)
        writer.writerows([[row[c] for c in columns] for row in rows])
        return buffer.getvalue()
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
        *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells),
        f"({len(rows)} rows)",
    ]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:3])
        return f"[{shown}, ... ({len(value)} values)]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else str(value)
