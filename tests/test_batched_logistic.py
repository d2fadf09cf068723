"""The batched linear probe fits scikit-learn's: the same objective solved to the same
tolerance, so the same weights (to the solvers' tolerance) and the same predictions, fit by
fit, including the cases a small control task produces (a class missing from a training fold,
a training fold of one class, two classes).

scikit-learn's pipeline (`probe_maths.make_probe`) is the reference throughout.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from lens_assets.analyses import batched_logistic
from lens_assets.analyses.probe_maths import (
    ProbeSettings,
    _cross_validate,
    _fit_predict,
    make_probe,
)


def data(seed: int, n: int = 90, dim: int = 12, classes: int = 3, strength: float = 1.5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, dim))
    X = (rng.normal(size=(n, dim)) + strength * centres[y]).astype(np.float32)
    return X, y


def folds(y: np.ndarray, k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros(len(y)), y))


def sklearn_weights(X: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """scikit-learn's fit as (dim + 1, classes) weights on the standardised features: a
    binomial fit's one vector split as the symmetric two-class softmax's (+w/2, -w/2)."""
    fitted = make_probe("linear", ProbeSettings()).fit(X, y)[-1]
    present = fitted.classes_
    W = np.zeros((X.shape[1] + 1, classes))
    if len(present) == 2:
        half = np.append(fitted.coef_[0], fitted.intercept_[0]) / 2
        W[:, present[1]], W[:, present[0]] = half, -half
    else:
        W[:-1, present] = fitted.coef_.T
        W[-1, present] = fitted.intercept_
    return W


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_each_fit_reaches_sklearns_weights_and_predictions(classes: int) -> None:
    X, y = data(seed=classes, classes=classes)
    shuffled = np.random.default_rng(1).permutation(y)
    splits = folds(y)
    batch = batched_logistic.fold_batch(X, [y, shuffled], splits, C=1.0)
    W = batched_logistic.fit(batch)
    for index, codes in enumerate([y, shuffled]):
        for f, (train, test) in enumerate(splits):
            fit = index * len(splits) + f
            expected = sklearn_weights(X[train], codes[train], classes)
            # Both runs stop at max |gradient| <= 1e-4 of one strongly convex objective (L2
            # strength 1 / (C n_train) ~ 0.014): the same minimum, weights within ~1e-4 / 0.014.
            loss, gradient = batch.objective(W[[fit]], np.array([fit]))
            reference_loss, _ = batch.objective(expected[None], np.array([fit]))
            assert np.abs(gradient).max() <= 1e-4
            assert loss[0] == pytest.approx(reference_loss[0], rel=1e-4)
            np.testing.assert_allclose(W[fit], expected, atol=1e-2)
            predicted = batched_logistic.predict(batch, W, np.array([fit]), test)[0]
            reference = _fit_predict(X[train], codes[train], X[test], "linear", ProbeSettings())
            np.testing.assert_array_equal(predicted, reference)


def test_a_class_missing_from_a_training_fold_is_never_predicted() -> None:
    # A control task on a small set can leave a class out of a training fold: the fit is then
    # over the classes present, as scikit-learn's is.
    X, y = data(seed=3, classes=4)
    test = np.flatnonzero((y == 3) | (np.arange(len(y)) % 7 == 0))
    train = np.setdiff1d(np.arange(len(y)), test)
    batch = batched_logistic.fold_batch(X, [y], [(train, test)], C=1.0)
    W = batched_logistic.fit(batch)
    predicted = batched_logistic.predict(batch, W, np.array([0]), test)[0]
    assert 3 not in predicted
    reference = _fit_predict(X[train], y[train], X[test], "linear", ProbeSettings())
    np.testing.assert_array_equal(predicted, reference)


def test_a_training_fold_of_one_class_predicts_it() -> None:
    X, _ = data(seed=4)
    y = np.zeros(len(X), dtype=np.int64)
    y[-5:] = 1
    train, test = np.arange(len(X) - 5), np.arange(len(X) - 5, len(X))
    batch = batched_logistic.fold_batch(X, [y], [(train, test)], C=1.0)
    predicted = batched_logistic.predict(batch, batched_logistic.fit(batch), np.array([0]), test)
    np.testing.assert_array_equal(predicted[0], np.zeros(5))


def test_cross_validated_accuracy_equals_the_sklearn_pipelines() -> None:
    settings = ProbeSettings()
    for seed in range(4):
        X, y = data(seed=10 + seed, n=120, dim=40, classes=4, strength=0.6)
        splits = folds(y)
        batched = _cross_validate(X, y, splits, "linear", settings)
        hits = [
            int((_fit_predict(X[tr], y[tr], X[te], "linear", settings) == y[te]).sum())
            for tr, te in splits
        ]
        assert batched.correct == sum(hits)
        assert batched.accuracy == pytest.approx(
            np.mean([h / len(te) for h, (_, te) in zip(hits, splits, strict=True)])
        )


def test_max_iter_bounds_every_fit() -> None:
    X, y = data(seed=5, classes=3)
    splits = folds(y)
    batch = batched_logistic.fold_batch(X, [y], splits, C=1.0)
    one_step = batched_logistic.fit(batch, max_iter=1)
    converged = batched_logistic.fit(batch)
    loss_one, _ = batch.objective(one_step)
    loss_converged, _ = batch.objective(converged)
    assert (loss_converged < loss_one - 1e-3).all()
