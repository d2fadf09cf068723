"""Where a warehouse lives: any folder name works, and a moved or copied warehouse opens."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lens_assets.resources.warehouse import Warehouse, WarehouseError, WarehouseLocation

from tests.writers import write_partitions


def rows(warehouse: Warehouse) -> int:
    return warehouse.fetch_arrow("SELECT count(*) FROM activations").column(0)[0].as_py()


def test_a_warehouse_path_with_quotes_is_attached_not_injected(tmp_path: Path) -> None:
    root = tmp_path / 'it\'s a "lab" folder; DROP TABLE x --' / "warehouse"
    write_partitions(str(root), "m", 1)
    assert rows(Warehouse.at(root)) == 50
    done = subprocess.run(
        [sys.executable, "-m", "lens_assets.cli", "sql", "SELECT count(*) AS n FROM runs",
         "--format", "csv", "--warehouse", str(root)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["n", "1"]


def rendered_image(warehouse: Warehouse) -> None:
    """An image rendered under the warehouse, as generated datasets are."""
    image = warehouse.root / "datasets" / "shapes" / "a.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"png")
    with warehouse.connect() as con:
        con.execute("INSERT INTO images VALUES ('a', 'shapes', ?, 1, 1, NULL)", [str(image)])


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_warehouse_opens_and_follows_its_folder(tmp_path: Path, how: str) -> None:
    old = tmp_path / "old" / "warehouse"
    write_partitions(str(old), "m", 1)
    rendered_image(Warehouse.at(old))
    new = tmp_path / "new" / "warehouse"
    new.parent.mkdir()
    (shutil.move if how == "moved" else shutil.copytree)(old, new)

    warehouse = Warehouse.at(new)
    assert rows(warehouse) == 50
    path = warehouse.fetch_arrow("SELECT path FROM images").column(0)[0].as_py()
    assert path == str(new / "datasets" / "shapes" / "a.png")
    write_partitions(str(new), "m2", 1)  # new data lands in the new folder
    assert not list((tmp_path / "old").rglob("model=m2"))
    assert warehouse.stored_data_path() == f"{new / 'data'}/"
    if how == "copied":
        assert rows(Warehouse.at(old)) == 50  # the original is untouched


def test_a_catalog_whose_data_lives_elsewhere_names_the_setting_to_fix(tmp_path: Path) -> None:
    root = tmp_path / "warehouse"
    write_partitions(str(root), "m", 1)
    elsewhere = WarehouseLocation(root, f"sqlite:{root / 'catalog.sqlite'}", "/somewhere/data/")
    with pytest.raises(WarehouseError, match="LENS_DATA_PATH"):
        Warehouse(elsewhere).fetch_arrow("SELECT 1")
