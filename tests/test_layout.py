"""The package layout: one installed package, and imports that follow the data flow."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"lens_assets.resources": ROOT / "resources", "lens_assets.sql": ROOT / "sql"}


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    found: dict[str, Path] = {}
    roots = {"lens_assets": ROOT / "lens_assets", **MAPPED}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules this module imports: at the top, inside a function, or by a
    registry's "module:attribute" string (imported on first use)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets.add(node.value.split(":", 1)[0])
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in modules else base)
    return {target for target in targets if target in modules and target != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_module_imports_itself_back_through_others() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # The package's own __init__ loads `defs` lazily for Dagster; nothing imports it back.
    assert _cycles(graph) == []


def test_importing_the_package_loads_no_top_level_resources_or_sql() -> None:
    probe = (
        "import sys, lens_assets, lens_assets.resources.warehouse, lens_assets.capture.extraction;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('resources', 'sql')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_readme_layout_names_every_package_and_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    words = set(re.findall(r"[\w.]+/?", layout))
    folders = [path.parent for path in (ROOT / "lens_assets").rglob("__init__.py")]
    missing = [f"{folder.name}/" for folder in folders if f"{folder.name}/" not in words]
    # The modules of the layers (not each family's adapter, tiny builder or generator).
    layers = [ROOT / "lens_assets", *(ROOT / "lens_assets" / name for name in LAYERS)]
    modules = [path for folder in [*layers, ROOT / "resources"] for path in folder.glob("*.py")]
    missing += [
        path.stem for path in modules if path.stem != "__init__" and not _named(path, words)
    ]
    assert missing == []


LAYERS = ("data", "capture", "analyses", "orchestration")


def _named(path: Path, words: set[str]) -> bool:
    return path.stem in words or path.name in words or f"{path.stem}," in words


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: an in-tree build/ folder keeps stale modules.
    source = tmp_path / "source"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("lensflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"lens_assets"}
    assert "lens_assets/resources/warehouse.py" in names
    assert "lens_assets/sql/001_images.sql" in names
