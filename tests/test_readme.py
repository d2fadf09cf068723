"""The README's claims point at tests that exist: a renamed or deleted test breaks this."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rows_naming_tests(section: str | None = None) -> list[str]:
    """Table rows of the README (or of one `## section`) whose last cell names tests."""
    text = (ROOT / "README.md").read_text()
    if section:
        text = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [line for line in text.splitlines() if line.startswith("| ") and "`tests/" in line]


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_the_readme_names_exists() -> None:
    assert len(rows_naming_tests("Reliability")) >= 12
    assert len(rows_naming_tests("Attention, attribution and interventions")) >= 7
    for row in rows_naming_tests():
        cell = row.rstrip(" |").rsplit("|", 1)[1]
        current: Path | None = None
        for reference in re.findall(r"`([^`]+)`", cell):
            file, _, name = reference.partition("::")
            if file:
                current = ROOT / file
                assert current.is_file(), f"{row}: no file {file}"
            assert current is not None
            if name:
                assert name in functions_in(current), f"{row}: no test {name} in {current.name}"


def test_the_warehouse_section_lists_every_table_with_its_declared_columns() -> None:
    from lens_assets.resources.schemas import TABLES

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## The warehouse", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    text = " ".join(line.split("--", 1)[0] for line in block.splitlines())
    listed = {
        name: [column.split()[0] for column in columns.split(",")]
        for name, columns in re.findall(r"(?<!view )\b(\w+)\(([^)]*)\)", text)
    }
    declared = {name: s.names for name, s in TABLES.items() if not name.startswith("lens_")}
    assert {name: listed.get(name) for name in declared} == declared


def test_the_family_count_is_the_coverage_tables() -> None:
    from lens_assets.capture.families import FAMILIES
    from lens_assets.capture.tiny import tiny_architectures

    readme = (ROOT / "README.md").read_text()
    claim = f"**Models**: {len(FAMILIES)} families"
    assert claim in readme
    assert f"{len(tiny_architectures())}\n  with a tiny checkpoint, tested offline" in readme
