"""The README's five example queries run on a real warehouse and return what numpy computes
from the same vectors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from lens_assets.resources.warehouse import Warehouse

from lens_assets.analyses.reading import load_image_labels, load_vectors
from lens_assets.orchestration.materialize import materialize_missing

REPO = Path(__file__).resolve().parent.parent
LLAVA, CLIP = "tiny-llava", "tiny-clip"


def readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"Five queries.*?```sql\n(.*?)```", text, re.S)
    assert block, "README lost its five example queries"
    body = "\n".join(line for line in block.group(1).splitlines() if not line.startswith("--"))
    queries = [q.strip() for q in body.split(";") if q.strip()]
    assert len(queries) == 5
    return queries


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    root = tmp_path_factory.mktemp("sql-examples")
    configs = root / "configs"
    (configs / "datasets").mkdir(parents=True)
    (configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 12\nseed: 3\n")
    (configs / "models").mkdir()
    for family, name in (("llava", LLAVA), ("clip", CLIP)):
        shutil.copy(REPO / "configs" / "models" / family / f"{name}.yaml", configs / "models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LENS_CONFIGS", str(configs))
        _, results = materialize_missing(
            root / "warehouse",
            {"images", "activations", "layer_similarity"},
            instance=dg.DagsterInstance.ephemeral(),
        )
    assert all(r.success for _, r in results)
    return Warehouse.at(root / "warehouse")


def run(warehouse: Warehouse, number: int) -> list[dict]:
    return warehouse.fetch_arrow(readme_queries()[number - 1]).to_pylist()


def vectors(warehouse: Warehouse, model: str, layer: str, pooling: str):
    """Image ids and their vectors: the shapes set asks each image one question, so each row
    is one image."""
    keys, X = load_vectors(warehouse, model, "shapes", layer, pooling)
    pairs = warehouse.fetch_arrow(
        "SELECT DISTINCT row_key, image_id FROM activations WHERE model = ?", [model]
    ).to_pylist()
    image_of = {pair["row_key"]: pair["image_id"] for pair in pairs}
    ids = [image_of[key] for key in keys]
    assert len(set(ids)) == len(ids), "one row per image"
    return ids, X


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_1_nearest_images(warehouse: Warehouse) -> None:
    ids, X = vectors(warehouse, LLAVA, "model.language_model.norm", "last")
    query = int(np.argmin(ids))
    scores = [(cosine(X[i], X[query]), ids[i]) for i in range(len(ids)) if i != query]
    expected = sorted(scores, key=lambda s: (-s[0], s[1]))[:5]
    rows = run(warehouse, 1)
    assert [r["image_id"] for r in rows] == [image for _, image in expected]
    assert np.allclose([r["cosine"] for r in rows], [c for c, _ in expected], atol=1e-5)


def test_2_closest_layer_of_another_model(warehouse: Warehouse) -> None:
    def layers(model: str) -> list[str]:
        found = warehouse.fetch_arrow(
            "SELECT DISTINCT layer FROM activations WHERE model = ? AND pooling = 'last' "
            "ORDER BY layer",
            [model],
        )
        return found.column(0).to_pylist()

    clip = {layer: vectors(warehouse, CLIP, layer, "last")[1] for layer in layers(CLIP)}
    expected = {}
    for layer in layers(LLAVA):
        mine = vectors(warehouse, LLAVA, layer, "last")[1]
        scores = {other: cka(mine, theirs) for other, theirs in clip.items()}
        best = max(scores, key=scores.get)
        expected[layer] = (best, scores[best])
    rows = run(warehouse, 2)
    # One row per (dataset, layer): this warehouse has one dataset, so one row per layer.
    assert [(r["dataset"], r["layer"]) for r in rows] == [
        ("shapes", layer) for layer in sorted(expected)
    ]
    assert {r["layer"]: r["other_layer"] for r in rows} == {k: v[0] for k, v in expected.items()}
    for row in rows:
        assert row["cka"] == pytest.approx(expected[row["layer"]][1], abs=1e-6)
        assert row["n"] >= 3


def test_3_cosine_between_two_images(warehouse: Warehouse) -> None:
    ids, X = vectors(warehouse, LLAVA, "model.language_model.norm", "last")
    (row,) = run(warehouse, 3)
    expected = cosine(X[int(np.argmin(ids))], X[int(np.argmax(ids))])
    assert row["cosine"] == pytest.approx(expected, abs=1e-6)


def test_4_mean_norm_per_colour(warehouse: Warehouse) -> None:
    ids, X = vectors(warehouse, LLAVA, "model.vision_tower.encoder.layers.1", "mean_image")
    colours = load_image_labels(warehouse, "shapes")["colour"]
    norms = np.linalg.norm(X.astype(np.float64), axis=1)
    expected = {
        colour: float(np.mean([n for i, n in zip(ids, norms, strict=True) if colours[i] == colour]))
        for colour in sorted(set(colours.values()))
    }
    rows = run(warehouse, 4)
    assert [r["colour"] for r in rows] == list(expected)
    for row in rows:
        assert row["mean_norm"] == pytest.approx(expected[row["colour"]], rel=1e-5)


def test_5_vlm_lens_tensor_view(warehouse: Warehouse) -> None:
    ids, X = vectors(warehouse, CLIP, "visual_projection", "none")
    first = (
        warehouse.fetch_arrow(
            "SELECT image_id FROM images WHERE path = (SELECT min(path) FROM images)"
        )
        .column(0)[0]
        .as_py()
    )
    (row,) = run(warehouse, 5)
    assert row["name"] == CLIP and row["tensor_dim"] == X.shape[1]
    assert np.array_equal(np.asarray(row["tensor"], dtype=np.float32), X[ids.index(first)])


def test_closest_layers_ranks_no_pair_measured_on_fewer_than_three_images(tmp_path: Path) -> None:
    from lens_assets.resources import schemas

    def pair(layer_b: str, dataset: str, n: int, cka: float | None) -> dict:
        return {"model_a": "a", "layer_a": "x", "model_b": "b", "layer_b": layer_b,
                "dataset": dataset, "pooling": "last", "n": n, "cka": cka,
                "cka_unbiased": cka}  # fmt: skip

    rows = [pair("y", "big", 5, 0.4), pair("z", "big", 5, 0.9), pair("y", "one", 1, None),
            pair("z", "two", 2, 1.0)]  # fmt: skip
    # Written by a warehouse of the previous schema (migrations up to 015), opened by today's.
    from lens_assets.resources import warehouse as warehouse_module

    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    (old_sql / "016_closest_layers_min_images.sql").unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        Warehouse.at(tmp_path / "wh").replace_rows(
            "true", [], {"layer_similarity": schemas.rows_table(schemas.LAYER_SIMILARITY, rows)}
        )
    with Warehouse.at(tmp_path / "wh").session() as wh:
        ranked = wh.fetch_arrow(
            "SELECT dataset, other_layer, n, rank FROM closest_layers WHERE model = 'a' "
            "ORDER BY dataset, rank"
        ).to_pylist()
    assert ranked == [
        {"dataset": "big", "other_layer": "z", "n": 5, "rank": 1},
        {"dataset": "big", "other_layer": "y", "n": 5, "rank": 2},
    ]


def _nearest_others(X: np.ndarray, ids: list[str], query: int, k: int) -> list[tuple[float, str]]:
    """The k images most cosine-similar to image `query`, the query itself left out."""
    scores = [(cosine(X[i], X[query]), ids[i]) for i in range(len(ids)) if i != query]
    return sorted(scores, key=lambda s: (-s[0], s[1]))[:k]


def test_the_warehouse_sections_similarity_command_ranks_one_models_other_images(
    warehouse: Warehouse,
) -> None:
    commands = re.findall(r'^lens sql "([^"]*)"', (REPO / "README.md").read_text(), re.M)
    (similar,) = [command for command in commands if "list_cosine_similarity" in command]
    ids, X = vectors(warehouse, LLAVA, "model.language_model.norm", "last")
    expected = _nearest_others(X, ids, int(np.argmin(ids)), 5)
    rows = warehouse.fetch_arrow(similar).to_pylist()
    assert [r["image_id"] for r in rows] == [image for _, image in expected]
    assert np.allclose([r["cos"] for r in rows], [c for c, _ in expected], atol=1e-5)


def test_the_demos_red_square_query_leaves_the_red_square_out(warehouse: Warehouse) -> None:
    from lens_assets.demo import EXAMPLE_QUERIES

    (query,) = [sql for title, sql in EXAMPLE_QUERIES if "red square" in title]
    ids, X = vectors(warehouse, LLAVA, "model.language_model.norm", "last")
    red = sorted(image for image, colour in load_image_labels(warehouse, "shapes")["colour"].items()
                 if colour == "red")  # fmt: skip
    expected = _nearest_others(X, ids, ids.index(red[0]), 3)
    rows = warehouse.fetch_arrow(query).to_pylist()
    images = warehouse.fetch_arrow("SELECT image_id, path FROM images").to_pylist()
    paths = {row["image_id"]: row["path"] for row in images}
    assert paths[red[0]] not in [r["path"] for r in rows]
    assert [r["path"] for r in rows] == [paths[image] for _, image in expected]
    assert np.allclose([r["cosine"] for r in rows], [c for c, _ in expected], atol=1e-4)
