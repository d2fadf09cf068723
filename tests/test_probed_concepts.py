"""Which labels are concepts: a dataset declares them (its config's `concepts`, else its
generator's), the declaration travels in `row_labels.role`, and `probed_concepts` probes those,
plus undeclared labels whose values look like classes (not ids, not coordinates), plus whatever
configs/probing.yaml asks for by name. A declared `control_type` is the control task's input.
A warehouse from before the `role` column opens, upgrades and probes by values."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from lens_assets.analyses.probing import (
    ProbeSettings,
    input_types,
    not_a_concept,
    probe_layers,
    probed_concepts,
)
from lens_assets.analyses.reading import answer_labels, label_roles, load_labels
from lens_assets.config import ConfigError
from lens_assets.data.collected import DatasetImages
from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.orchestration.assets import DATASET_TABLES


def stored(warehouse: Warehouse, collected: DatasetImages) -> Warehouse:
    warehouse.replace_dataset_rows(
        [collected.name],
        {
            table: pa.Table.from_pylist(getattr(collected, part), schema)
            for table, (part, schema) in DATASET_TABLES.items()
        },
    )
    return warehouse


def chosen(warehouse: Warehouse, dataset: str, requested: list[str] | None = None) -> list[str]:
    labels = load_labels(warehouse, dataset) | answer_labels(warehouse, dataset)
    with warehouse.connect(read_only=True) as con:
        return probed_concepts(con, dataset, labels, requested)


def test_an_undeclared_label_is_judged_by_its_values() -> None:
    rows = [f"r{i}" for i in range(40)]
    colour = {r: ("red", "green", "blue")[i % 3] for i, r in enumerate(rows)}
    count = {r: str(i % 4) for i, r in enumerate(rows)}
    item = {r: f"item-{i}" for i, r in enumerate(rows)}
    x = {r: str(7 * i % 29) for i, r in enumerate(rows)}  # 29 different pixel columns
    scale = {r: f"{1 + (i % 3) / 4:.2f}" for i, r in enumerate(rows)}  # 1.00, 1.25, 1.50
    assert not_a_concept(colour) is None
    assert not_a_concept(count) is None  # a few integers: classes (clevr's count)
    assert not_a_concept({"a": "0", "b": "1", "c": "1"}) is None  # a binary 0/1 label
    assert "identifier" in not_a_concept(item)
    assert "29 different numbers" in not_a_concept(x)
    assert "fractions" in not_a_concept(scale)


def test_a_generators_declaration_reaches_the_warehouse_and_leaves_out_coordinates(
    tmp_path: Path,
) -> None:
    config = parse_dataset_config({"kind": "correspondence", "size": 8}, "t")
    warehouse = stored(Warehouse.at(tmp_path / "wh"), collect_images("pairs", config, tmp_path))
    roles = label_roles(warehouse, "pairs")
    assert roles["transform"] == "concept"
    assert {roles[label] for label in ("a_x", "ref_y", "item", "answer", "affine")} == {"other"}
    # The question's answer is probed as VLM-Lens's layout does; coordinates and ids are not.
    assert chosen(warehouse, "pairs") == ["transform", "answer:correspondence"]
    assert chosen(warehouse, "pairs", ["ref_y", "transform"]) == ["ref_y", "transform"]


def png(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    """24 distinct images with a colour, a count, an id, a pixel coordinate and a scale."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    lines = ["image,colour,count,item,x,scale"]
    for i in range(24):
        (folder / f"{i:02d}.png").write_bytes(png((10 * i, 200 - 5 * i, 90)))
        colour = ("red", "green", "blue")[i % 3]
        lines.append(f"{i:02d}.png,{colour},{i % 2 + 1},item-{i},{5 * i % 23},{1 + i % 4 / 8}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def folder_config(folder: Path, **declared: object) -> object:
    return parse_dataset_config(
        {"kind": "folder", "path": str(folder), "labels": "labels.csv", **declared}, "t"
    )


def test_an_undeclared_folder_probes_its_classes_but_not_its_ids_or_coordinates(
    tmp_path: Path, labelled_folder: Path
) -> None:
    collected = collect_images("plain", folder_config(labelled_folder), tmp_path)
    warehouse = stored(Warehouse.at(tmp_path / "wh"), collected)
    assert label_roles(warehouse, "plain") == {}  # nothing declared: every role NULL
    assert chosen(warehouse, "plain") == ["colour", "count"]
    assert chosen(warehouse, "plain", ["item", "x"]) == ["item", "x"]  # asked by name


def test_a_dataset_config_declares_its_concepts_and_its_control_type(
    tmp_path: Path, labelled_folder: Path
) -> None:
    config = folder_config(labelled_folder, concepts=["colour", "x"], control_type="item")
    warehouse = stored(Warehouse.at(tmp_path / "wh"), collect_images("plain", config, tmp_path))
    assert label_roles(warehouse, "plain") == {
        "colour": "concept", "x": "concept", "item": "control_type",
        "count": "other", "scale": "other",
    }  # fmt: skip
    assert chosen(warehouse, "plain") == ["colour", "x"]  # x: declared, so probed

    typo = folder_config(labelled_folder, concepts=["colour", "colur"])
    with pytest.raises(ConfigError, match=r"\['colur'\].*its labels are \['colour', 'count'"):
        collect_images("plain", typo, tmp_path)
    with pytest.raises(ConfigError, match=r"concepts: .*leave `concepts` out"):
        folder_config(labelled_folder, concepts=[])
    with pytest.raises(ConfigError, match="control_type 'item' is also listed in concepts"):
        folder_config(labelled_folder, concepts=["item"], control_type="item")


def test_input_types_are_the_declared_type_else_the_images_else_the_row() -> None:
    pictures = {"a": ("img-1",), "b": ("img-1",), "c": ("img-2", "img-3"), "d": ()}
    assert input_types(["a", "b", "c", "d"], pictures) == [
        "images:img-1", "images:img-1", "images:img-2\x1fimg-3", "row:d",
    ]  # fmt: skip
    declared = {"a": "cup", "c": "cup"}
    assert input_types(["a", "b", "c", "d"], pictures, declared) == [
        "type:cup", "images:img-1", "type:cup", "row:d",
    ]  # fmt: skip


def objects_warehouse(path: Path, role: str | None) -> Warehouse:
    """12 objects photographed 5 times each; an object's photos lie close together, and its
    colour is one of three. A probe can learn colour here by memorising objects."""
    rng = np.random.default_rng(0)
    objects = np.repeat(np.arange(12), 5)
    colours = np.array(["red", "green", "blue"])[objects % 3]
    X = rng.normal(size=(12, 32))[objects] * 3 + rng.normal(size=(60, 32))
    keys = [f"row-{i:02d}" for i in range(60)]
    rows = [{"dataset": "photos", "row_key": key, "position": i, "image_ids": [f"img-{i}"]}
            for i, key in enumerate(keys)]  # fmt: skip
    labels = [
        {"dataset": "photos", "row_key": key, "concept": concept, "value": value, "role": kind}
        for key, obj, colour in zip(keys, objects, colours, strict=True)
        for concept, value, kind in (("colour", colour, None), ("object", f"obj-{obj}", role))
    ]
    warehouse = Warehouse.at(path)
    warehouse.replace_dataset_rows(
        ["photos"],
        {"dataset_rows": pa.Table.from_pylist(rows), "row_labels": pa.Table.from_pylist(labels)},
    )
    vectors = pa.table({
        "row_key": keys,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).ravel()), 32),
    })  # fmt: skip
    with warehouse.connect() as con:
        con.register("incoming", vectors)
        con.execute(
            """
            INSERT INTO activations BY NAME
            SELECT 'tiny' AS model, 'synthetic' AS architecture, 'photos' AS dataset,
                   row_key, 'Describe.' AS prompt, 'layers.0' AS layer, 'mean' AS pooling,
                   32 AS dim, vector::FLOAT[] AS vector
            FROM incoming
            """
        )
    return warehouse


def test_a_declared_control_type_is_the_control_tasks_input(tmp_path: Path) -> None:
    # Photos as inputs: the control task is a random label per photo, which no probe can
    # carry to unseen photos (control ~0.3, selectivity ~0.7). The object as the input (the
    # dataset says its photos are one input): a random label per object, which the probe
    # memorises as easily as the colours (control ~1.0, selectivity ~0), showing that the
    # colour accuracy came from telling objects apart.
    settings = ProbeSettings(permutations=0)
    by_photo = probe_layers(objects_warehouse(tmp_path / "a", None), "tiny", settings, None,
                            ["colour"])  # fmt: skip
    by_object = probe_layers(
        objects_warehouse(tmp_path / "b", "control_type"), "tiny", settings, None, ["colour"]
    )
    ((photo,), (obj,)) = by_photo, by_object
    assert photo["accuracy"] == obj["accuracy"] > 0.9
    assert photo["control_accuracy"] < 0.5 and photo["selectivity"] > 0.4
    assert obj["control_accuracy"] > 0.85 and abs(obj["selectivity"]) < 0.15


def test_a_warehouse_from_before_label_roles_upgrades_and_probes_by_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in old_sql.glob("[0-9][0-9][0-9]_*.sql"):
        if int(script.name[:3]) >= 19:
            script.unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            for row in range(4):
                con.execute(
                    "INSERT INTO row_labels VALUES ('d', ?, 'colour', ?), ('d', ?, 'item', ?)",
                    [f"r{row}", ("red", "blue")[row % 2], f"r{row}", f"item-{row}"],
                )
    # Read-only, the old schema is not migrated: no roles, probing goes by values.
    with warehouse.connect(read_only=True) as con:
        assert "role" not in con.execute("SELECT * FROM row_labels LIMIT 0").to_arrow_table()
        assert label_roles(con, "d") == {}
    with warehouse.connect() as con:  # read-write: sql/019 adds the column
        columns = [row[0] for row in con.execute("DESCRIBE row_labels").fetchall()]
    assert columns == ["dataset", "row_key", "concept", "value", "role"]
    nulls = warehouse.fetch_arrow("SELECT count(*) AS n FROM row_labels WHERE role IS NULL")
    assert nulls.to_pylist() == [{"n": 8}]  # the old rows declare nothing
    assert chosen(warehouse, "d") == ["colour"]  # item: an identifier
