"""Materialization metadata the Dagster UI renders."""

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path

from dagster import MetadataValue


def markdown_image(path: Path, title: str) -> MetadataValue:
    """A PNG inlined in markdown metadata, so the UI shows the picture itself."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def picture_metadata(key: str, picture: Path | None, title: str) -> dict[str, MetadataValue]:
    """A drawn picture under `key` (inline, so the UI shows it) and its file under `key_path`
    (to open it full size); nothing when there was nothing to draw."""
    if picture is None:
        return {}
    return {key: markdown_image(picture, title), f"{key}_path": MetadataValue.path(str(picture))}


def markdown_table(rows: Sequence[Mapping[str, object]], limit: int | None = None) -> MetadataValue:
    """Rows (dicts with the same keys) as a markdown table, the first `limit` of them."""
    if not rows:
        return MetadataValue.md("(no rows)")
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows[:limit]]
    return MetadataValue.md("\n".join(lines))
