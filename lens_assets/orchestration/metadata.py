"""Materialization metadata the Dagster UI renders."""

import base64
from pathlib import Path

from dagster import MetadataValue


def markdown_image(path: Path, title: str) -> MetadataValue:
    """A PNG inlined in markdown metadata, so the UI shows the picture itself."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")
