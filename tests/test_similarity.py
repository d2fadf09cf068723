"""Similarity math on synthetic data whose answer is known: CKA's invariances and its noise floor,
total variation on hand-computed distributions, a Stroop cue planted in a 2-D subspace, and
representations built to follow one cue.

Every random draw is seeded. Margins were checked over other seeds (20 for the CKA noise floor,
8 for the planted cue, 6 for dominance), so a threshold is not passed by a lucky draw.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from lens_assets.analyses.similarity import (
    components_to_separate,
    distribution,
    dominance,
    linear_cka,
    separation_curve,
    total_variation,
)

# --------------------------------------------------------------------------------------------
# CKA


def _reference_cka(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """CKA straight from the n x n Gram matrices, written as in the papers."""
    n = x.shape[0]

    def hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
        if not unbiased:
            h = np.eye(n) - 1.0 / n
            return float(np.trace(k @ h @ l @ h))
        k, l = k.copy(), l.copy()  # noqa: E741
        np.fill_diagonal(k, 0.0)
        np.fill_diagonal(l, 0.0)
        one = np.ones(n)
        return float(
            (
                np.trace(k @ l)
                + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (one @ k @ l @ one)
            )
            / (n * (n - 3))
        )

    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_one_for_rotated_scaled_copy(unbiased: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 40)) + 5.0  # an offset too: CKA centres
    q = ortho_group.rvs(40, random_state=1)
    assert linear_cka(x, 3.7 * x @ q + 2.0, unbiased=unbiased) == pytest.approx(1.0, abs=1e-6)


def test_cka_of_independent_noise_is_small_biased_and_near_zero_unbiased() -> None:
    # Over seeds 0..19 the biased value stays in [0.085, 0.099] (theory: p q / (n p + p^2)
    # ~ 0.091) and the unbiased one in [-0.006, 0.009].
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 50)), rng.normal(size=(500, 50))
    assert 0.05 < linear_cka(x, y) < 0.15
    assert abs(linear_cka(x, y, unbiased=True)) < 0.05


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matches_gram_formula_both_forms_symmetric(unbiased: bool) -> None:
    rng = np.random.default_rng(2)
    # Narrow (feature form) and wide relative to n (Gram form), with different widths.
    for n, p, q in [(60, 5, 8), (12, 50, 30)]:
        x = rng.normal(size=(n, p))
        y = x[:, :3] @ rng.normal(size=(3, q)) + 0.5 * rng.normal(size=(n, q))
        expected = _reference_cka(x - x.mean(0), y - y.mean(0), unbiased)
        assert linear_cka(x, y, unbiased) == pytest.approx(expected, rel=1e-9)
        assert linear_cka(y, x, unbiased) == pytest.approx(linear_cka(x, y, unbiased), rel=1e-12)


def test_cka_of_a_projection_is_between_noise_and_one() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 30))
    y = x[:, :10] @ rng.normal(size=(10, 25))  # width differs, shares a third of x
    noise = rng.normal(size=(400, 25))
    for unbiased in (False, True):
        shared = linear_cka(x, y, unbiased)
        assert linear_cka(x, noise, unbiased) < 0.2 < shared < 0.95
        assert linear_cka(y, y, unbiased) == pytest.approx(1.0)


def test_cka_constant_representation_is_zero_and_bad_shapes_raise() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 4))
    assert linear_cka(x, np.full((20, 3), 0.1)) == 0.0
    assert linear_cka(np.ones((20, 2)), x, unbiased=True) == 0.0
    with pytest.raises(ValueError, match="same rows"):
        linear_cka(x, x[:10])
    with pytest.raises(ValueError, match="n >= 4"):
        linear_cka(x[:3], x[:3], unbiased=True)
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[:, 0], x)


# --------------------------------------------------------------------------------------------
# Total variation


def test_total_variation_hand_computed() -> None:
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)
    assert total_variation({"a": 0.3, "b": 0.7}, {"b": 0.7, "a": 0.3}) == 0.0
    assert total_variation({"a": 1.0}, {"b": 2.0}) == pytest.approx(1.0)
    # Counts are normalised: {1/4, 3/4} vs {1/2, 1/2} -> 0.5 (0.25 + 0.25) = 0.25.
    assert total_variation({"a": 1, "b": 3}, {"a": 5, "b": 5}) == pytest.approx(0.25)
    assert total_variation({"a": 2, "c": 2}, {"a": 1, "b": 1}) == pytest.approx(0.5)


def test_total_variation_rejects_empty_or_zero() -> None:
    for bad in ({}, {"a": 0.0}):
        with pytest.raises(ValueError, match="empty or sums to zero"):
            total_variation(bad, {"a": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        total_variation({"a": -1.0, "b": 2.0}, {"a": 1.0})


def test_distribution_counts_none() -> None:
    d = distribution(["red", None, "red", "blue"])
    assert d == {"(none)": 0.25, "blue": 0.25, "red": 0.5}
    assert distribution([]) == {}
    assert total_variation(d, distribution(["red"])) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# Separation curve


def _planted(seed: int = 0) -> tuple[np.ndarray, dict[str, list[str]]]:
    """360 items in 30 dims: cue "shape" lives in a 2-D subspace (6 classes on a circle, so one
    direction cannot separate them), cue "absent" is independent of X."""
    rng = np.random.default_rng(seed)
    n, dim, classes = 360, 30, 6
    y = np.arange(n) % classes
    angle = 2 * np.pi * y / classes
    latent = 5.0 * np.column_stack([np.cos(angle), np.sin(angle)])
    loading = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T  # orthonormal: a 2-D subspace
    x = latent @ loading + rng.normal(size=(n, dim))
    absent = rng.integers(0, 4, size=n)
    return x, {"shape": [f"s{v}" for v in y], "absent": [f"c{v}" for v in absent]}


def test_separation_finds_planted_two_dimensional_cue() -> None:
    x, labels = _planted()
    rows = separation_curve(x, labels, max_components=5)
    assert len(rows) == 10
    assert set(rows[0]) == {"cue", "components", "nearest_centroid_accuracy", "knn_accuracy"}
    by = {(r["cue"], r["components"]): r for r in rows}
    assert by["shape", 1]["nearest_centroid_accuracy"] < 0.8  # 0.51 to 0.68 over 8 seeds
    for k in range(2, 6):
        assert by["shape", k]["nearest_centroid_accuracy"] >= 0.9
        assert by["shape", k]["knn_accuracy"] >= 0.9
        # Chance is 0.25; 360 items put two standard errors near 0.05.
        assert by["absent", k]["nearest_centroid_accuracy"] < 0.4
        assert by["absent", k]["knn_accuracy"] < 0.4
    assert components_to_separate(rows) == {"shape": 2, "absent": None}


def _reference_separation(x, labels, max_components, neighbours=5, folds=5, seed=0):
    """The separation curve as scikit-learn computes it, one fit per fold and k: the scaler
    and PCA on the training part, NearestCentroid and KNeighborsClassifier on k components."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
    from sklearn.preprocessing import StandardScaler

    n = len(x)
    top = min(max_components, x.shape[1], n - -(-n // folds))
    rows = []
    for cue, values in labels.items():
        y = np.asarray(values)
        nc, knn = np.zeros(top, dtype=int), np.zeros(top, dtype=int)
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
            scaler = StandardScaler().fit(x[train])
            pca = PCA(n_components=top, svd_solver="full").fit(scaler.transform(x[train]))
            z_train = pca.transform(scaler.transform(x[train]))
            z_test = pca.transform(scaler.transform(x[test]))
            for k in range(1, top + 1):
                centroid = NearestCentroid().fit(z_train[:, :k], y[train])
                nc[k - 1] += int((centroid.predict(z_test[:, :k]) == y[test]).sum())
                near = KNeighborsClassifier(min(neighbours, len(train))).fit(
                    z_train[:, :k], y[train]
                )
                knn[k - 1] += int((near.predict(z_test[:, :k]) == y[test]).sum())
        rows += [
            {"cue": cue, "components": k, "nearest_centroid_accuracy": nc[k - 1] / n,
             "knn_accuracy": knn[k - 1] / n}
            for k in range(1, top + 1)
        ]  # fmt: skip
    return rows


def test_separation_equals_scikit_learns_fold_by_fold_fits() -> None:
    x, labels = _planted()
    assert separation_curve(x, labels, max_components=6) == _reference_separation(x, labels, 6)


def test_separation_equals_scikit_learn_where_duplicate_vectors_tie() -> None:
    # A text tower gives every row with the same prompt one vector: neighbours tie, and which
    # of them k-NN counts is scikit-learn's search order, kept.
    rng = np.random.default_rng(3)
    prompts = rng.normal(size=(8, 16))
    which = rng.integers(0, 8, size=120)
    x = prompts[which] + 0.0
    labels = {"cue": [f"c{v}" for v in rng.integers(0, 4, size=120)]}
    assert separation_curve(x, labels, max_components=6) == _reference_separation(x, labels, 6)


def test_separation_is_deterministic_for_a_seed() -> None:
    x, labels = _planted()
    assert separation_curve(x, labels, max_components=3, seed=7) == separation_curve(
        x, labels, max_components=3, seed=7
    )


def test_separation_caps_components_and_checks_classes() -> None:
    x, labels = _planted()
    rows = separation_curve(x[:, :3], {"shape": labels["shape"]}, max_components=10)
    assert [r["components"] for r in rows] == [1, 2, 3]
    with pytest.raises(ValueError, match="fewer than folds"):
        separation_curve(x[:8], {"shape": labels["shape"][:8]})


def test_components_to_separate_threshold() -> None:
    rows = [
        {"cue": "word", "components": k, "nearest_centroid_accuracy": a, "knn_accuracy": a}
        for k, a in [(1, 0.5), (2, 0.85), (3, 0.95)]
    ]
    assert components_to_separate(rows) == {"word": 3}
    assert components_to_separate(rows, threshold=0.8) == {"word": 2}
    assert components_to_separate(rows, threshold=0.99) == {"word": None}


# --------------------------------------------------------------------------------------------
# Dominance


COLOURS = ["red", "green", "blue", "yellow", "purple"]


def _stroop(n: int, seed: int) -> tuple[dict[str, list[str]], np.ndarray]:
    """Stroop-like items cycling through the generator's three kinds: word == font,
    word == background, and all three different (the disagreeing ones). Background never
    equals font."""
    rng = np.random.default_rng(seed)
    words, fonts, backgrounds, conflict = [], [], [], []
    for i in range(n):
        w, a, b = (COLOURS[j] for j in rng.permutation(len(COLOURS))[:3])
        kind = i % 3
        font, background = [(w, a), (a, w), (a, b)][kind]
        words.append(w)
        fonts.append(font)
        backgrounds.append(background)
        conflict.append(kind == 2)
    return {"word": words, "font": fonts, "background": backgrounds}, np.array(conflict)


def _following(labels: dict[str, list[str]], cue: str, seed: int, dim: int = 24) -> np.ndarray:
    """Vectors = a random embedding of `cue`'s colour, a weaker trace of the others, noise."""
    rng = np.random.default_rng(seed)
    embedding = {c: rng.normal(size=dim) for c in COLOURS}
    x = rng.normal(size=(len(labels[cue]), dim))
    for name, values in labels.items():
        weight = 1.0 if name == cue else 0.3
        x += weight * np.stack([embedding[v] for v in values])
    return x


@pytest.mark.parametrize("cue", ["font", "word", "background"])
def test_dominance_picks_the_planted_cue(cue: str) -> None:
    labels, conflict = _stroop(300, seed=0)
    x = _following(labels, cue, seed=1)
    shares = dominance(x, labels, conflict)
    assert set(shares) == {"word", "font", "background", "none"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares[cue] > 0.8
    assert max(shares, key=shares.get) == cue
    # With principal components (the VLM-Lens view) the answer is the same.
    reduced = dominance(x, labels, conflict, components=8)
    assert max(reduced, key=reduced.get) == cue


@pytest.mark.parametrize("cue", ["font", "word"])
def test_dominance_with_congruent_prototypes(cue: str) -> None:
    labels, conflict = _stroop(300, seed=0)
    shares = dominance(_following(labels, cue, 1), labels, conflict, agree_on=("word", "font"))
    assert shares[cue] > 0.8
    assert max(shares, key=shares.get) == cue


def test_dominance_is_deterministic() -> None:
    labels, conflict = _stroop(150, seed=3)
    x = _following(labels, "word", seed=4)
    assert dominance(x, labels, conflict, components=5) == dominance(
        x, labels, conflict, components=5
    )


def test_dominance_errors_are_explicit() -> None:
    labels, conflict = _stroop(60, seed=0)
    x = _following(labels, "font", seed=1)
    with pytest.raises(ValueError, match="no disagreeing items"):
        dominance(x, labels, np.zeros(60, dtype=bool))
    keep = [*np.flatnonzero(conflict).tolist(), int(np.flatnonzero(~conflict)[0])]
    with pytest.raises(ValueError, match="no prototype data"):  # one prototype colour only
        dominance(x[keep], {k: [v[i] for i in keep] for k, v in labels.items()}, conflict[keep])
    with pytest.raises(ValueError, match="same colour"):
        dominance(x, labels, np.ones(60, dtype=bool))


def test_stroop_helper_matches_the_generator_design() -> None:
    labels, conflict = _stroop(30, seed=0)
    for w, f, b, c in zip(*labels.values(), conflict, strict=True):
        assert f != b
        assert c == (len({w, f, b}) == 3)
