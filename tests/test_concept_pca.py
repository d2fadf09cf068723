"""VLM-Lens's concept workflow (asset concept_pca): the maths against a plain re-implementation
of VLM-Lens's loops and on vectors with a known answer, the concept image set as a folder of
one subfolder per concept, the warehouse tables (and an upgrade to them), and the asset on a
real tiny model recovering a planted colour concept."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from lens_assets.resources import schemas
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.schemas import sql_type
from lens_assets.resources.warehouse import Warehouse
from PIL import Image
from sklearn.decomposition import PCA

from lens_assets.analyses.concept_pca import (
    ConceptSettings,
    centroid_cosines,
    compare_with_concepts,
    knn_votes,
    layer_summary,
)
from lens_assets.catalog import dataset_configs, dataset_version
from lens_assets.config import ConfigError
from lens_assets.data import generators
from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.orchestration.sensors import sync_configs
from tests.test_dagster import Project, new_project

SETTINGS = ConceptSettings(concept_set="concepts")


# -- the maths ---------------------------------------------------------------------------------


def test_centroid_cosines_grow_over_components_as_cosines_of_truncated_vectors() -> None:
    z = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    centroids = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    found = centroid_cosines(z, centroids)
    assert found.shape == (3, 2, 3)
    # k = 1: the second centroid's first coordinate is 0, so its cosine is 0 (VLM-Lens's guard)
    assert found[:, :, 0].tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    assert found[1, :, 1] == pytest.approx([1 / np.sqrt(2), 1 / np.sqrt(2)])
    assert found[2, :, 2] == pytest.approx([0.0, 1 / np.sqrt(2)])
    assert found[1, 1, 2] == pytest.approx(1 / 2)  # (1,1,0).(0,1,1) / (sqrt2 sqrt2)


def test_weighted_knn_votes_similarity_to_the_power_and_ignores_negative_neighbours() -> None:
    bank = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    labels = np.array([0, 1, 1, 2, 2])
    item = np.array([[2.0, 0.0]])  # cosines 1, 0.8, 0, -1, 0.6
    votes, winner = knn_votes(item, bank, labels, 3, k=3, power=1.0)
    assert votes[0] == pytest.approx([1.0, 0.8, 0.6])  # the 3 nearest: 1 (a), 0.8 (b), 0.6 (c)
    assert winner.tolist() == [0]
    votes, winner = knn_votes(item, bank, labels, 3, k=5, power=2.0)
    assert votes[0] == pytest.approx([1.0, 0.64, 0.36])  # negative cosine -1 counts 0
    # two weaker neighbours outvote one strong one
    bank = np.array([[1.0, 0.0], [0.9, 0.43589], [0.9, -0.43589]])
    votes, winner = knn_votes(item, bank, np.array([0, 1, 1]), 2, k=3, power=1.0)
    assert votes[0] == pytest.approx([1.0, 1.8], abs=1e-4) and winner.tolist() == [1]


def test_a_knn_tie_goes_to_the_concept_of_the_nearer_neighbour() -> None:
    # Mirror images: the same cosine (0.6) to one item of each concept, concept 1's listed
    # first, so it ranks first among equals; the lowest index (concept 0) must not win.
    bank = np.array([[3.0, -4.0], [3.0, 4.0], [-1.0, 0.0]])
    labels = np.array([1, 0, 0])
    votes, winner = knn_votes(np.array([[1.0, 0.0]]), bank, labels, 2, k=3, power=1.0)
    assert votes[0, 0] == votes[0, 1] == pytest.approx(0.6)  # the -1 neighbour votes 0
    assert winner.tolist() == [1]
    # every neighbour at or below 0: all votes 0, the nearest neighbour's concept wins
    votes, winner = knn_votes(np.array([[-1.0, 0.0]]), bank[:2], labels[:2], 2, k=2, power=1.0)
    assert votes[0].tolist() == [0.0, 0.0] and winner.tolist() == [1]
    # cosines -0.89 (concept 1, listed first) and -0.18 (concept 0): the nearer one wins
    votes, winner = knn_votes(np.array([[-1.0, 0.5]]), bank[:2], labels[:2], 2, k=2, power=1.0)
    assert votes[0].tolist() == [0.0, 0.0] and winner.tolist() == [0]


def planted(seed: int, per_concept: int, dim: int, concepts: int = 3, strength: float = 3.0):
    """Items of `concepts` concepts: a concept's direction times `strength` plus unit noise."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(concepts, dim))
    x = np.concatenate([directions[c] * strength + rng.normal(size=(per_concept, dim))
                        for c in range(concepts)])  # fmt: skip
    labels = [f"c{c}" for c in range(concepts) for _ in range(per_concept)]
    return x, labels, directions


def vlm_lens_reference(concepts, labels, targets, k_components, knn_k=5, power=1.0):
    """VLM-Lens's own loops (src/concepts/pca.py, pca_knn.py), written out plainly: PCA refitted
    for this k on the concept set, centroid cosines with its zero guard, and the dict vote."""
    pca = PCA(n_components=k_components, random_state=42).fit(concepts)
    zc, zt = pca.transform(concepts), pca.transform(targets)
    names = sorted(set(labels))
    groups = defaultdict(list)
    for vector, label in zip(zc, labels, strict=True):
        groups[label].append(vector)

    def cosine(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 0.0 if na == 0 or nb == 0 else float(np.dot(a, b) / (na * nb))

    sims = [[cosine(t, np.mean(groups[n], axis=0)) for n in names] for t in zt]
    winners = []
    for t in zt:
        neighbours = sorted(
            ((cosine(t, v), label) for v, label in zip(zc, labels, strict=True)),
            key=lambda pair: -pair[0],
        )[:knn_k]
        wsum: dict[str, float] = defaultdict(float)
        for sim, label in neighbours:
            wsum[label] += max(0.0, sim) ** power
        winners.append(max(wsum.items(), key=lambda kv: kv[1])[0])
    return np.array(sims), winners


def test_curves_and_knn_match_vlm_lens_refitting_pca_for_every_k() -> None:
    x, labels, directions = planted(seed=1, per_concept=20, dim=64)
    rng = np.random.default_rng(2)
    targets = np.concatenate([directions[c] * 1.5 + rng.normal(size=(4, 64)) for c in range(3)])
    found = compare_with_concepts(x, labels, targets, SETTINGS)
    assert found.components == 50  # min(50, 64 features, 60 concept items)
    for k in (1, 2, 5, 17, 50):
        sims, winners = vlm_lens_reference(x, labels, targets, k)
        assert np.allclose(found.similarities[:, :, k - 1], sims, atol=1e-8), k
        assert [found.concepts[w] for w in found.knn[:, k - 1]] == winners, k


def test_a_planted_concept_is_recovered_and_the_cap_follows_the_data() -> None:
    x, labels, directions = planted(seed=3, per_concept=10, dim=200, concepts=4)
    rng = np.random.default_rng(4)
    truth = [f"c{c}" for c in range(4) for _ in range(5)]
    targets = np.concatenate([directions[c] * 2 + rng.normal(size=(5, 200)) for c in range(4)])
    found = compare_with_concepts(x, labels, targets, SETTINGS)
    assert found.components == 40  # fewer concept items (40) than features and than 50
    rows = layer_summary(found, truth)
    assert [r["components"] for r in rows] == list(range(1, 41))
    for row in rows[2:10]:  # three components span the four centroids' differences
        assert row["centroid_accuracy"] == 1.0 and row["knn_accuracy"] == 1.0
        assert row["own_similarity"] > 0.8 > 0.2 > row["other_similarity"]
    assert rows[-1]["explained_variance"] == pytest.approx(1.0)
    # Items with no known concept are compared but not scored
    unknown = layer_summary(found, [None] * 20)
    assert unknown[0]["n"] == 0 and unknown[0]["centroid_accuracy"] is None
    wide = compare_with_concepts(*planted(seed=5, per_concept=40, dim=300)[:2], None, SETTINGS)
    assert wide.components == 50  # 120 items held out by 5 folds: 96 to fit on, capped at 50


def test_the_concept_set_held_out_against_itself_does_not_see_its_own_items() -> None:
    """Labels with no relation to the vectors: an item compared with a bank holding itself
    would be its own nearest neighbour (accuracy 1); held out, the accuracy is chance."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 30))
    labels = [f"c{i % 3}" for i in range(60)]
    found = compare_with_concepts(x, labels, None, SETTINGS)
    assert found.components == 30 and found.similarities.shape == (60, 3, 30)
    rows = layer_summary(found, labels)
    assert max(r["knn_accuracy"] for r in rows) < 0.6
    assert max(r["centroid_accuracy"] for r in rows) < 0.6
    leaky = compare_with_concepts(x, labels, x, SETTINGS)
    assert layer_summary(leaky, labels)[-1]["knn_accuracy"] > 0.9  # what holding out prevents


def test_too_little_to_compare_is_refused_with_the_reason() -> None:
    x = np.eye(4)
    with pytest.raises(ValueError, match="two or more"):
        compare_with_concepts(x, ["a"] * 4, None, SETTINGS)
    with pytest.raises(ValueError, match="'b' has one item"):
        compare_with_concepts(x, ["a", "a", "a", "b"], None, SETTINGS)


# -- the concept image set ---------------------------------------------------------------------

PALETTE = {"red": (200, 30, 40), "green": (40, 160, 50), "blue": (40, 70, 210),
           "yellow": (240, 220, 20)}  # fmt: skip
SIZES = [(40, 40), (48, 32), (32, 48), (56, 40), (40, 56), (44, 44)]


def colour_folder(root: Path, per_colour: int = 6, seed: int = 0) -> Path:
    """One subfolder per colour of pictures that are mostly that colour (noise, a blotch)."""
    rng = np.random.default_rng(seed)
    for colour, rgb in PALETTE.items():
        (root / colour).mkdir(parents=True)
        for index in range(per_colour):
            width, height = SIZES[index % len(SIZES)]
            pixels = np.array(rgb, dtype=np.int16) + rng.integers(-25, 26, size=(height, width, 3))
            pixels[: height // 3, : width // 3] += int(rng.integers(-40, 41))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
            image.save(root / colour / f"{index:02d}.png")
    return root


def test_a_folder_of_concept_subfolders_labels_each_image_by_its_subfolder(
    tmp_path: Path,
) -> None:
    folder = colour_folder(tmp_path / "set", per_colour=2)
    Image.new("RGB", (8, 8)).save(folder / "loose.png")
    config = parse_dataset_config(
        {"kind": "folder", "path": str(folder), "concept_from": "subfolder",
         "concept_label": "colour"}, "test"
    )  # fmt: skip
    out = collect_images("colours", config, tmp_path / "rendered")
    paths = {r["image_id"]: Path(r["path"]) for r in out.rows}
    found = sorted((row.labels["colour"], paths[row.image_ids[0]].parent.name)
                   for row in out.items)  # fmt: skip
    assert found == sorted((c, c) for c in PALETTE for _ in range(2))
    assert [Path(e["path"]).name for e in out.errors] == ["loose.png"]
    assert "not in a concept subfolder" in out.errors[0]["error"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no subfolders"):
        collect_images("x", config.model_copy(update={"path": str(empty)}), tmp_path / "r")


def test_a_new_picture_in_a_concept_subfolder_makes_the_dataset_stale(tmp_path: Path) -> None:
    folder = colour_folder(tmp_path / "set", per_colour=1)
    (tmp_path / "datasets").mkdir()
    config = {"kind": "folder", "path": str(folder), "concept_from": "subfolder"}
    (tmp_path / "datasets" / "colours.yaml").write_text(yaml.safe_dump(config))
    (file,) = dataset_configs(tmp_path).values()
    before = dataset_version(file)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(folder / "red" / "new.png")
    assert dataset_version(file) != before


def test_vlm_lens_concept_file_names_name_the_concept(tmp_path: Path) -> None:
    for name in ("blue_01.jpg", "blue_02.png", "dark_red_7.png", "sky.png"):
        Image.new("RGB", (8, 8), (len(name) * 9, 0, 0)).save(tmp_path / name)
    config = parse_dataset_config(
        {"kind": "folder", "path": str(tmp_path), "concept_from": "file_name"}, "test"
    )
    out = collect_images("concepts", config, tmp_path / "rendered")
    assert sorted(row.labels["concept"] for row in out.items) == [
        "blue", "blue", "dark_red", "sky",
    ]  # fmt: skip


def test_the_colour_patches_generator_deals_the_palette_with_vlm_lens_names() -> None:
    params = generators.params_model("colour_patches").model_validate({"palette": ["red", "blue"]})
    first = list(generators.generate("colour_patches", params, 4, 0))
    again = list(generators.generate("colour_patches", params, 4, 0))
    assert [s.name for s in first] == ["red_01", "blue_01", "red_02", "blue_02"]
    assert [s.labels for s in first] == [{"colour": c} for c in ("red", "blue", "red", "blue")]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, again, strict=True))
    red = np.asarray(first[0].image, dtype=float).reshape(-1, 3).mean(axis=0)
    assert red[0] > 150 and red[1] < 80 and red[2] < 90
    with pytest.raises(ValueError, match="palette"):
        generators.params_model("colour_patches").model_validate({"palette": ["red", "mauve"]})


# -- the warehouse -----------------------------------------------------------------------------


def test_a_warehouse_of_the_previous_schema_gains_the_concept_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in old_sql.glob("[0-9][0-9][0-9]_*.sql"):
        if script.name >= "021_concept_pca.sql":
            script.unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            con.execute(
                "INSERT INTO concept_dominance VALUES ('m', 'stroop', 'l1', 'last', 'word', 0.5, 3)"
            )
            tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
            assert "concept_pca" not in tables
    with warehouse.connect() as con:  # today's code applies 021
        for table in ("concept_pca", "concept_pca_layers"):
            described = [(r[0], r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall()]
            assert described == [(f.name, sql_type(f.type)) for f in schemas.TABLES[table]]
        assert con.execute("SELECT count(*) FROM concept_dominance").fetchone()[0] == 1
        applied = {r[0] for r in con.execute("SELECT name FROM lens_migrations").fetchall()}
        assert "021_concept_pca.sql" in applied


# -- the asset on a real tiny model -------------------------------------------------------------

VISION = ["model.vision_tower.encoder.layers.0", "model.vision_tower.encoder.layers.1"]


@pytest.fixture
def concept_project(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = new_project(tmp_path, monkeypatch, tiny_dir)
    folder = colour_folder(tmp_path / "colour-set", per_colour=6, seed=0)
    (project.configs / "datasets" / "colours.yaml").write_text(yaml.safe_dump({
        "kind": "folder", "path": str(folder), "concept_from": "subfolder",
        "concept_label": "colour",
    }))  # fmt: skip
    (project.configs / "concepts.yaml").write_text(yaml.safe_dump({
        "concept_set": "colours", "concept": "colour",
        "targets": {"colours": "colour", "shapes": "colour"}, "folds": 3,
    }))  # fmt: skip
    project.add_model(
        "tiny-llava", "llava", modules=[*VISION, "model.language_model.layers.1"],
        pooling=["mean_image", "last"], batch_size=4,
    )  # fmt: skip
    sync_configs(project.instance)
    return project


def test_the_concept_pca_asset_recovers_a_planted_colour_in_the_vision_tower(
    concept_project: Project,
) -> None:
    project = concept_project
    project.materialize(assets={"images", "activations", "concept_pca"})
    wh = project.warehouse
    layers = wh.fetch_arrow(
        "SELECT * FROM concept_pca_layers WHERE dataset = 'colours' AND pooling = 'mean_image' "
        "ORDER BY layer, components"
    ).to_pylist()
    by_layer = defaultdict(list)
    for row in layers:
        by_layer[row["layer"]].append(row)
    assert set(VISION) <= set(by_layer)
    for layer in VISION:
        rows = by_layer[layer]
        # 24 items held out by 3 folds: 16 to fit on, so 1..16 components
        assert [r["components"] for r in rows] == list(range(1, 17))
        assert all(r["n"] == 24 for r in rows)
        at = {r["components"]: r for r in rows}
        for k in (3, 5, 10):  # three components span four colour centroids
            assert at[k]["centroid_accuracy"] >= 0.9, (layer, k, at[k])
            assert at[k]["knn_accuracy"] >= 0.9, (layer, k, at[k])
            assert at[k]["own_similarity"] > at[k]["other_similarity"], (layer, k)
    # Per item: its own centroid is the nearest at the layers that encode colour
    items = wh.fetch_arrow(
        "SELECT row_key, truth, arg_max(concept, similarities[5]) AS nearest, "
        "any_value(knn_concept) AS knn FROM concept_pca WHERE dataset = 'colours' "
        "AND pooling = 'mean_image' AND layer = ? GROUP BY row_key, truth",
        [VISION[0]],
    ).to_pylist()
    assert len(items) == 24
    assert sum(i["nearest"] == i["truth"] for i in items) >= 22
    assert sum(i["knn"] == i["truth"] for i in items) >= 22
    # The other target is compared with the whole concept set: a curve per item and concept
    shapes = wh.fetch_arrow(
        "SELECT count(DISTINCT row_key) AS items, count(DISTINCT concept) AS concepts, "
        "min(len(similarities)) AS k FROM concept_pca WHERE dataset = 'shapes' AND layer = ?",
        [VISION[0]],
    ).to_pylist()[0]
    assert shapes == {"items": 4, "concepts": 4, "k": 24}  # capped by the 24 concept items
    reports = wh.root / "reports" / "tiny-llava"
    for name in ("concept_pca_curves.png", "concept_pca_scatter.png"):
        with Image.open(reports / name) as picture:  # the pictures' conventions: the UI's width
            assert picture.width <= 800
    event = project.instance.get_latest_materialization_event(dg.AssetKey("concept_pca"))
    metadata = event.asset_materialization.metadata
    assert {"concept_curves", "concept_scatter", "best_layers"} <= set(metadata)
