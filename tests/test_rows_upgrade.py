"""A warehouse written by the image-keyed schema (before sql/017_rows.sql) opens and is upgraded
in place: every image becomes a row with no prompt of its own, every question about an image a
row more, labels follow their rows, and the stored activations are keyed by those rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.warehouse import Warehouse

from lens_assets.analyses.reading import load_labels, load_vectors
from lens_assets.data.rows import row_key

MIGRATIONS = sorted(warehouse_module.SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))
ROWS_MIGRATION = next(i for i, m in enumerate(MIGRATIONS) if m.name == "017_rows.sql")


@pytest.fixture
def image_keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """A warehouse made by the migrations before 017, holding two images, their labels, one
    question and two images' activations, as the previous code wrote them."""
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in MIGRATIONS[ROWS_MIGRATION:]:
        (old_sql / script.name).unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            con.execute("""
                INSERT INTO images VALUES
                    ('img-a', 'shapes', '/data/a.png', 32, 32, 'train'),
                    ('img-b', 'shapes', '/data/b.png', 32, 32, 'test');
                INSERT INTO image_labels VALUES
                    ('img-a', 'shapes', 'colour', 'red'), ('img-b', 'shapes', 'colour', 'blue');
                INSERT INTO prompts VALUES
                    ('img-a', 'shapes', 0, 'What colour?', 'red', 'attribute', 'colour');
                INSERT INTO activations (model, architecture, dataset, image_id, prompt, layer,
                                         pooling, token_index, token_role, dim, vector) VALUES
                    ('m', 'llava', 'shapes', 'img-a', 'Describe.', 'l1', 'last', NULL, NULL, 2,
                     [1.0, 2.0]),
                    ('m', 'llava', 'shapes', 'img-b', 'Describe.', 'l1', 'last', NULL, NULL, 2,
                     [3.0, 4.0]),
                    ('m', 'llava', 'shapes', 'img-a', 'Describe.', 'l1', 'tokens', 0, 'image', 2,
                     [5.0, 6.0]);
            """)
            names = {r[0] for r in con.execute("SELECT name FROM lens_migrations").fetchall()}
            assert "017_rows.sql" not in names
    with warehouse.connect():  # today's code opens it: the migrations it lacks are applied
        pass
    return warehouse


def test_images_and_questions_become_rows_keyed_as_the_code_keys_them(
    image_keyed: Warehouse,
) -> None:
    rows = image_keyed.fetch_arrow(
        "SELECT row_key, image_ids, prompt, answer, split, kind, concept FROM dataset_rows "
        "ORDER BY position"
    ).to_pylist()
    assert rows == [
        {"row_key": row_key(["img-a"], None), "image_ids": ["img-a"], "prompt": None,
         "answer": None, "split": "train", "kind": None, "concept": None},
        {"row_key": row_key(["img-b"], None), "image_ids": ["img-b"], "prompt": None,
         "answer": None, "split": "test", "kind": None, "concept": None},
        {"row_key": row_key(["img-a"], "What colour?"), "image_ids": ["img-a"],
         "prompt": "What colour?", "answer": "red", "split": "train", "kind": "attribute",
         "concept": "colour"},
    ]  # fmt: skip


def test_labels_follow_their_rows(image_keyed: Warehouse) -> None:
    labels = load_labels(image_keyed, "shapes")
    assert labels["colour"][row_key(["img-a"], None)] == "red"
    assert labels["colour"][row_key(["img-b"], None)] == "blue"
    assert labels["colour"][row_key(["img-a"], "What colour?")] == "red"


def test_stored_activations_are_read_by_row(image_keyed: Warehouse) -> None:
    keys, vectors = load_vectors(image_keyed, "m", "shapes", "l1", "last")
    assert keys == sorted([row_key(["img-a"], None), row_key(["img-b"], None)])
    by_key = dict(zip(keys, vectors.tolist(), strict=True))
    assert by_key[row_key(["img-a"], None)] == [1.0, 2.0]
    tokens = image_keyed.fetch_arrow(
        "SELECT image_ids, image_index FROM activations WHERE pooling = 'tokens'"
    ).to_pylist()
    assert tokens == [{"image_ids": ["img-a"], "image_index": 0}]


def test_the_tensors_view_keeps_vlm_lens_shape_over_the_upgraded_rows(
    image_keyed: Warehouse,
) -> None:
    found = image_keyed.fetch_arrow(
        "SELECT name, image_path, prompt, layer, pooling_method FROM tensors "
        "WHERE pooling_method = 'last' ORDER BY image_path"
    ).to_pylist()
    assert [(r["image_path"], r["prompt"]) for r in found] == [
        ("/data/a.png", "Describe."),
        ("/data/b.png", "Describe."),
    ]
