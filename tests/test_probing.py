"""Probes on synthetic activations whose truth is known: a concept planted linearly in one layer
and absent from another, a concept only an MLP can read (XOR), the control task's contract, the
significance tests, and the warehouse path (`load_vectors`, `probe_layers`).

Every random draw is seeded, so each outcome is deterministic; the sizes are chosen so that the
margins to each threshold are wide (stated where it matters), not so that a lucky seed passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from lens_assets.resources.schemas import PROBE_RESULTS
from lens_assets.resources.warehouse import Warehouse
from scipy.stats import norm

from lens_assets.analyses.probe_maths import (
    ProbeSettings,
    control_labels,
    probe,
    two_proportion_z_p_value,
)
from lens_assets.analyses.probing import probe_layers
from lens_assets.analyses.reading import list_column_to_matrix, load_labels, load_vectors


def planted(
    seed: int, n: int = 200, dim: int = 64, classes: int = 3, strength: float = 3.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Labels, a layer where each class is shifted by `strength` noise SDs along its own random
    direction, a layer of pure noise, and input types: each example is an input of its own (a
    picture), never a function of its label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    directions = rng.normal(size=(classes, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    encoded = rng.normal(size=(n, dim)) + strength * directions[y]
    absent = rng.normal(size=(n, dim))
    return y, encoded, absent, [f"input-{i}" for i in range(n)]


def test_a_linearly_planted_concept_is_found_where_planted_and_not_where_absent() -> None:
    # Class means 3 * sqrt(2) ~ 4.2 noise SDs apart with 53 training examples per class in 64
    # dimensions: accuracy is ~0.93 (threshold 0.8) and the control task, a random label per
    # input that no probe can carry to unseen inputs, stays near chance (~0.4), so
    # selectivity ~0.5 (> 0.3); on the noise layer both are chance, selectivity ~0.01.
    # 200 permutations put the smallest possible p at 1/201, below 0.01 with room.
    settings = ProbeSettings(permutations=200)
    y, encoded, absent, types = planted(seed=0)

    found = probe(encoded, y, types, "linear", settings)
    assert found.accuracy > 0.8
    assert found.selectivity > 0.3
    assert found.p_value < 0.01
    assert found.z_p_value < 0.01
    assert found.shuffled_accuracy < 0.5
    assert (found.n, found.classes, found.kind) == (200, 3, "linear")
    assert 0 <= found.fold_std < 0.1

    # Under the null the p-value is uniform: this seed's (0.52) is far from 0.05 either way,
    # and test_the_permutation_test_is_calibrated_on_noise checks the rate over many seeds.
    missing = probe(absent, y, types, "linear", settings)
    assert abs(missing.selectivity) < 0.1
    assert missing.p_value > 0.05
    assert missing.accuracy < 0.5


def test_the_permutation_test_is_calibrated_on_noise() -> None:
    # 20 pure-noise layers: with a valid test about 1 in 20 has p < 0.05; 5 or more would
    # happen by chance with probability 0.003. Selectivity averages out near 0.
    settings = ProbeSettings(permutations=100)
    p_values, selectivities = [], []
    for seed in range(20):
        y, _, absent, types = planted(seed=100 + seed, n=120, dim=16)
        result = probe(absent, y, types, "linear", settings)
        p_values.append(result.p_value)
        selectivities.append(result.selectivity)
    assert sum(p < 0.05 for p in p_values) <= 4
    assert abs(np.mean(selectivities)) < 0.05
    assert all(1 / 101 <= p <= 1 for p in p_values)


def xor_layer(seed: int, n: int = 300, noise_dims: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The label is whether two features have the same sign: no line separates the classes."""
    rng = np.random.default_rng(seed)
    signal = rng.uniform(-1, 1, size=(n, 2))
    y = (np.sign(signal[:, 0]) == np.sign(signal[:, 1])).astype(int)
    return np.hstack([signal, rng.normal(scale=0.5, size=(n, noise_dims))]), y


def test_a_non_linear_concept_is_read_by_the_mlp_but_not_by_the_linear_probe() -> None:
    # Measured: MLP ~0.9 (threshold 0.8), linear ~0.5 (threshold 0.65) over several seeds.
    X, y = xor_layer(seed=0)
    types = [str(i) for i in range(len(y))]  # every example its own type
    settings = ProbeSettings(kinds=["linear", "mlp"], permutations=50)

    mlp = probe(X, y, types, "mlp", settings)
    linear = probe(X, y, types, "linear", settings)
    assert mlp.accuracy > 0.8
    assert linear.accuracy < 0.65
    # The MLP's permutation null is scored with an RBF kernel, so it sees the XOR too.
    assert mlp.p_value < 0.05
    assert mlp.z_p_value < 0.01


def test_control_labels_are_consistent_per_type_and_follow_the_label_distribution() -> None:
    rng = np.random.default_rng(7)
    y = rng.choice(["red", "green", "blue"], size=6000, p=[0.6, 0.3, 0.1])
    types = [f"type-{t}" for t in rng.integers(0, 2000, size=6000)]

    control = control_labels(y, types, seed=0)
    by_type: dict[str, set[str]] = {}
    for kind, label in zip(types, control, strict=True):
        by_type.setdefault(kind, set()).add(label)
    assert all(len(labels) == 1 for labels in by_type.values())
    # One draw per type (about 2,000 draws) from (0.6, 0.3, 0.1): each share within 0.05.
    per_type = [next(iter(labels)) for labels in by_type.values()]
    shares = {c: np.mean([label == c for label in per_type]) for c in ("red", "green", "blue")}
    assert shares == pytest.approx({"red": 0.6, "green": 0.3, "blue": 0.1}, abs=0.05)
    assert set(control) <= set(y)
    np.testing.assert_array_equal(control, control_labels(y, types, seed=0))
    assert not np.array_equal(control, control_labels(y, types, seed=1))


def test_the_two_proportion_z_test_matches_its_formula() -> None:
    pooled = (90 + 50) / 200
    z = (0.9 - 0.5) / np.sqrt(pooled * (1 - pooled) * 2 / 100)
    assert two_proportion_z_p_value(90, 50, 100) == pytest.approx(norm.sf(z))
    assert two_proportion_z_p_value(50, 50, 100) == pytest.approx(0.5)
    assert two_proportion_z_p_value(50, 90, 100) > 0.99
    assert two_proportion_z_p_value(100, 100, 100) == 0.5  # no spread: nothing to test


def test_refit_permutations_and_disabled_test() -> None:
    y, encoded, _, types = planted(seed=1, n=80, dim=8, strength=4.0)
    refit = probe(encoded, y, types, "linear", ProbeSettings(permutations=10, null="refit"))
    assert refit.p_value == pytest.approx(1 / 11)  # no permutation comes near 0.9+ accuracy
    assert np.isnan(probe(encoded, y, types, "linear", ProbeSettings(permutations=0)).p_value)


def test_constant_features_and_tiny_classes_do_not_break_a_probe() -> None:
    y, encoded, _, types = planted(seed=2, n=62, dim=8)
    y = np.where(np.arange(62) < 2, 3, y)  # a fourth class with two members: two folds only
    X = np.hstack([encoded, np.zeros((62, 3)), np.full((62, 1), 7.0)])
    for kind in ("linear", "mlp"):
        result = probe(X, y, types, kind, ProbeSettings(permutations=20, max_iter=100))
        values = [result.accuracy, result.control_accuracy, result.p_value, result.z_p_value]
        assert np.isfinite(values).all()
        assert result.classes == 4


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="kinds"):
        ProbeSettings(kinds=[])
    with pytest.raises(ValueError):
        ProbeSettings(kinds=["svm"])
    with pytest.raises(ValueError):
        ProbeSettings(folds=1)
    assert ProbeSettings(kinds=["mlp", "linear", "mlp"]).kinds == ["mlp", "linear"]


def test_list_columns_become_a_matrix_without_a_python_loop() -> None:
    # 7.7 million floats: the matrix is Arrow's own float buffer reshaped (no copy, so no loop
    # over rows and no to_pylist), whatever the machine's speed.
    matrix = np.random.default_rng(0).standard_normal((10_000, 768), dtype=np.float32)
    column = pa.chunked_array([pa.ListArray.from_arrays(
        pa.array(np.arange(0, matrix.size + 1, 768, dtype=np.int32)), pa.array(matrix.ravel())
    )])  # fmt: skip
    loaded = list_column_to_matrix(column, "test")
    assert loaded.ctypes.data == column.chunk(0).values.buffers()[1].address  # a view
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, matrix)
    sliced = pa.chunked_array([column.chunk(0).slice(3, 5)])  # offsets not starting at 0
    np.testing.assert_array_equal(list_column_to_matrix(sliced, "test"), matrix[3:8])
    ragged = pa.chunked_array([pa.array([[1.0, 2.0], [3.0]], type=pa.list_(pa.float32()))])
    with pytest.raises(ValueError, match="widths"):
        list_column_to_matrix(ragged, "test")


def insert_activations(
    warehouse: Warehouse, layer: str, pooling: str, image_ids: list[str], vectors: np.ndarray
) -> None:
    """As the extraction stores them: Arrow fixed-size lists of float32 cast to FLOAT[]."""
    rows = pa.table(
        {
            "image_id": image_ids,
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1]
            ),
        }
    )
    with warehouse.connect() as con:
        con.register("incoming", rows)
        con.execute(
            """
            INSERT INTO activations BY NAME  -- token_index, token_role, tile: NULL
            SELECT 'tiny' AS model, 'synthetic' AS architecture, 'shapes' AS dataset, image_id,
                   image_id AS row_key, [image_id] AS image_ids,
                   'Describe.' AS prompt, ? AS layer, ? AS pooling, ? AS dim,
                   vector::FLOAT[] AS vector
            FROM incoming
            """,
            [layer, pooling, vectors.shape[1]],
        )


def test_probe_layers_reads_the_warehouse_and_writes_one_row_per_probe(tmp_path: Path) -> None:
    warehouse = Warehouse.at(tmp_path / "wh")
    y, encoded, absent, _ = planted(seed=3, n=150, dim=32)
    image_ids = [f"img-{i:04d}" for i in range(150)][::-1]  # inserted out of order
    insert_activations(warehouse, "layers.10", "mean", image_ids, absent)
    insert_activations(warehouse, "layers.2", "mean", image_ids, encoded)
    insert_activations(warehouse, "layers.2", "tokens", image_ids[:5], encoded[:5])  # skipped
    colours = np.array(["red", "green", "blue"])[y]
    sizes = np.where(np.arange(150) % 2 == 0, "small", "large")
    sizes[0] = "huge"  # a class of one, below min_per_class: dropped
    labels = pa.table(
        {
            "image_id": image_ids * 3,
            "dataset": ["shapes"] * 450,
            "concept": ["colour"] * 150 + ["size"] * 150 + ["scene"] * 150,
            "value": [*colours[:-10], *[None] * 10, *sizes, *["indoor"] * 150],  # scene: constant
        }
    )
    with warehouse.connect() as con:
        con.register("incoming", labels)
        con.execute(  # no role: the dataset declares nothing, probing judges by values
            "INSERT INTO row_labels BY NAME "
            "SELECT dataset, image_id AS row_key, concept, value FROM incoming"
        )

    ids, X = load_vectors(warehouse, "tiny", "shapes", "layers.2", "mean")
    order = np.argsort(image_ids)
    assert ids == sorted(image_ids)
    np.testing.assert_array_equal(X, encoded.astype(np.float32)[order])  # bit-exact
    assert load_labels(warehouse, "shapes")["colour"][image_ids[0]] == colours[0]

    settings = ProbeSettings(
        kinds=["linear", "mlp"], permutations=50, max_iter=50, mlp_hidden=16, n_jobs=2
    )
    rows = probe_layers(warehouse, "tiny", settings)
    assert all(list(row) == PROBE_RESULTS.names for row in rows)
    keys = [(r["layer"], r["pooling"], r["concept"], r["probe"]) for r in rows]
    assert keys == [
        (layer, "mean", concept, kind)
        for layer in ("layers.2", "layers.10")  # natural order
        for concept in ("colour", "size")  # scene is constant: no probe
        for kind in ("linear", "mlp")
    ]
    by_key = {(r["layer"], r["concept"], r["probe"]): r for r in rows}
    colour = by_key["layers.2", "colour", "linear"]
    assert colour["n"] == 140 and colour["classes"] == 3  # ten images lack a colour label
    assert colour["accuracy"] > 0.8 and colour["selectivity"] > 0.3 and colour["p_value"] < 0.05
    assert colour["control_accuracy"] < 0.5  # each image its own input: chance is 1/3
    assert by_key["layers.10", "colour", "linear"]["accuracy"] < 0.6
    size = by_key["layers.2", "size", "linear"]
    assert size["n"] == 149 and size["classes"] == 2  # the one "huge" image is dropped
    assert {r["model"] for r in rows} == {"tiny"} and {r["dataset"] for r in rows} == {"shapes"}
    assert probe_layers(warehouse, "tiny", settings, concepts=["size"], datasets=["none"]) == []
