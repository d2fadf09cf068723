"""The maths of one probe: does a layer's activation matrix encode a concept, and is the
probe telling us about the layer?

A probe is a small classifier trained on a layer's pooled activations to predict a labelled
concept (colour, shape, count). High accuracy alone proves little: a flexible probe can learn
the task itself. Following Hewitt & Liang (2019, "Designing and Interpreting Probes with
Control Tasks") every probe is also trained on a *control task*, in which each distinct input
type (the input itself: an image, never its label) gets a random but consistent label, and
reports `selectivity = accuracy - control_accuracy`. After VLM-Lens it also reports a
shuffled-label control, and `z_p_value`: a one-sided two-proportion z-test of the probe's
against the shuffled control's correct predictions, pooled over the cross-validation folds
(VLM-Lens's own test is two-sided, on a held-out split: protocol 'vlm-lens'). A permutation
test gives a p-value for "the layer's activations carry information about the concept".

Arrays in, numbers out (numpy, scikit-learn, scipy): no warehouse here. Scanning a model's
layers from the warehouse is `probing.probe_layers`.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.linalg import cho_factor, cho_solve
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lens_assets.analyses import batched_logistic
from lens_assets.analyses.vlm_lens_settings import VlmLensSettings

ProbeKind = Literal["linear", "mlp"]

# Independent random streams derived from one seed, so that changing how many permutations
# are drawn never changes the control task or the shuffled labels.
_CONTROL_STREAM, _SHUFFLE_STREAM, _PERMUTATION_STREAM = 1, 2, 3
_SKLEARN_TOL = LogisticRegression().tol  # the linear probe's stopping tolerance


class ProbeSettings(BaseModel):
    """How probes are trained and tested. The defaults follow VLM-Lens where it has one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["cv", "vlm-lens"] = Field(
        "cv",
        description=(
            "'cv': k-fold cross-validation over all rows with a control task, a shuffled "
            "control, a permutation test and a one-sided z-test (this module); 'vlm-lens': "
            "VLM-Lens's held-out protocol with the settings under `vlm_lens` "
            "(analyses/vlm_lens_probe.py)"
        ),
    )
    vlm_lens: VlmLensSettings = Field(
        default_factory=VlmLensSettings, description="used by protocol 'vlm-lens' only"
    )
    kinds: list[ProbeKind] = Field(default_factory=lambda: ["linear"])
    folds: int = Field(5, ge=2)
    seed: int = 0
    permutations: int = Field(100, ge=0, description="label permutations; 0 disables the test")
    null: Literal["ridge", "refit"] = Field(
        "ridge",
        description=(
            "how each permutation is scored: 'ridge' scores every permutation at once with a "
            "closed-form kernel ridge classifier (fast; an exact permutation test of the same "
            "null), 'refit' retrains the probe itself per permutation (slow)"
        ),
    )
    min_per_class: int = Field(2, ge=1, description="classes with fewer examples are dropped")
    max_iter: int = Field(200, ge=1)
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the linear probe")
    mlp_hidden: int = Field(256, ge=1, description="one hidden ReLU layer, as in VLM-Lens")
    ridge_alpha: float = Field(1.0, gt=0, description="ridge strength of the 'ridge' null")
    n_jobs: int = Field(1, ge=1, description="probes trained at once by `probe_layers`")
    blas_threads: int | None = Field(
        1,
        ge=1,
        description=(
            "BLAS threads per probe; the matrices are small, so threads spin more than they "
            "help, and n_jobs parallelises better. None leaves the BLAS default"
        ),
    )

    @field_validator("kinds")
    @classmethod
    def _distinct_kinds(cls, kinds: list[ProbeKind]) -> list[ProbeKind]:
        if not kinds:
            raise ValueError("kinds must name at least one probe: 'linear' and/or 'mlp'")
        return list(dict.fromkeys(kinds))


@dataclass
class ProbeResult:
    """One probe of one concept on one layer's vectors."""

    kind: str
    accuracy: float  # mean over CV folds
    fold_std: float  # std over CV folds
    control_accuracy: float  # Hewitt & Liang control task, same probe, same folds
    selectivity: float  # accuracy - control_accuracy
    shuffled_accuracy: float  # labels permuted once (VLM-Lens's control)
    p_value: float  # permutation test; NaN when settings.permutations == 0
    z_p_value: float  # one-sided two-proportion z-test over pooled CV folds, probe > shuffled
    n: int
    classes: int


# --------------------------------------------------------------------------------------------
# One probe


def make_probe(kind: ProbeKind, settings: ProbeSettings) -> Pipeline:
    """Standardise, then a logistic regression (linear) or one hidden ReLU layer (mlp).

    Standardising inside the pipeline fits the scaler on each training fold only; a constant
    feature gets scale 1 from StandardScaler, so it stays constant instead of becoming NaN.
    """
    if kind == "linear":
        classifier = LogisticRegression(C=settings.C, max_iter=settings.max_iter)
    elif kind == "mlp":
        classifier = MLPClassifier(
            hidden_layer_sizes=(settings.mlp_hidden,),
            activation="relu",
            max_iter=settings.max_iter,
            random_state=settings.seed,
        )
    else:
        raise ValueError(f"unknown probe kind {kind!r}: use 'linear' or 'mlp'")
    return make_pipeline(StandardScaler(), classifier)


def control_labels(y: np.ndarray, input_types: Sequence[Any], seed: int) -> np.ndarray:
    """Hewitt & Liang's control task: every distinct input type gets one label, drawn at random
    from the task's empirical label distribution, and keeps it wherever it occurs.

    A probe can only solve the control task by memorising types, so accuracy on it measures
    what the probe itself can do rather than what the representation encodes. The type must
    name the input (its image), not its labels: types derived from labels make the control
    labels a function of the real ones, so a probe solves both alike and selectivity says
    nothing.
    """
    y = np.asarray(y)
    if len(input_types) != len(y):
        raise ValueError(f"{len(input_types)} input types for {len(y)} labels")
    classes, counts = np.unique(y, return_counts=True)
    _, type_of = np.unique(np.asarray([str(t) for t in input_types]), return_inverse=True)
    rng = np.random.default_rng([seed, _CONTROL_STREAM])
    per_type = rng.choice(classes, size=type_of.max() + 1, p=counts / counts.sum())
    return per_type[type_of]


def probe(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    input_types: Sequence[Any],
    kind: ProbeKind,
    settings: ProbeSettings | None = None,
) -> ProbeResult:
    """Train and test one probe with its controls and significance tests (see the module doc).

    `input_types[i]` names what example i "is" for the control task, the input itself (e.g.
    its image's content hash, `probing.input_types`): identical types get identical control
    labels.
    """
    settings = settings or ProbeSettings()
    with probing_context(settings):
        return probe_in_context(X, y, input_types, kind, settings)


def probe_inputs(
    X: np.ndarray, y: Sequence[Any] | np.ndarray, groups: Sequence[Any] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(X as float32, classes, class codes, group codes) of one probe task, checked: every
    protocol refuses the same bad inputs. Group codes are None where every example is its own
    picture (plain folds and splits)."""
    X = np.asarray(X, dtype=np.float32)
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    if X.ndim != 2 or len(X) != len(codes):
        raise ValueError(f"X is {X.shape} for {len(codes)} labels; expected (n, dim)")
    if len(classes) < 2:
        raise ValueError("a probe needs at least two classes")
    if not np.isfinite(X).all():
        raise ValueError("X holds NaN or Inf; run the finite_values check on the partition")
    group_codes = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if group_codes is not None and len(np.unique(group_codes)) == len(group_codes):
        group_codes = None
    return X, classes, codes, group_codes


def probe_in_context(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    input_types: Sequence[Any],
    kind: ProbeKind,
    settings: ProbeSettings,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> ProbeResult:
    """`probe` for a caller already inside `probing_context` (the layer scan's pool threads,
    which must not touch the process-wide warning filters themselves). With `groups`, examples
    of one group (rows sharing a picture) always fall in the same fold."""
    X, classes, codes, group_codes = probe_inputs(X, y, groups)
    splits = _splits(codes, settings, group_codes)

    control_codes = control_labels(codes, input_types, settings.seed)
    shuffled_codes = np.random.default_rng([settings.seed, _SHUFFLE_STREAM]).permutation(codes)
    task, control, shuffled = _cross_validate_each(
        X, [codes, control_codes, shuffled_codes], splits, kind, settings
    )

    return ProbeResult(
        kind=kind,
        accuracy=task.accuracy,
        fold_std=task.fold_std,
        control_accuracy=control.accuracy,
        selectivity=task.accuracy - control.accuracy,
        shuffled_accuracy=shuffled.accuracy,
        p_value=permutation_p_value(X, codes, kind, settings, task.accuracy, group_codes),
        z_p_value=two_proportion_z_p_value(task.correct, shuffled.correct, len(codes)),
        n=len(codes),
        classes=len(classes),
    )


@dataclass
class _CrossValidation:
    accuracy: float  # mean of the fold accuracies
    fold_std: float
    correct: int  # examples predicted right, each example tested exactly once


_FOLDS: OrderedDict[tuple[Any, ...], list[tuple[np.ndarray, np.ndarray]]] = OrderedDict()
_FOLDS_KEPT = 256
_FOLDS_LOCK = threading.Lock()


def _splits(
    codes: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`_folds`, remembered: every layer and pooling of a dataset probes a concept on the same
    rows, so the same labels and groups come back once per layer, and scikit-learn's
    stratified group split costs more than some of the probes it serves. The folds are
    read-only, as shared arrays must be."""
    group_key = None if groups is None else (groups.dtype.str, groups.tobytes())
    key = (codes.dtype.str, codes.tobytes(), group_key, settings.folds, settings.seed)
    with _FOLDS_LOCK:
        if key in _FOLDS:
            _FOLDS.move_to_end(key)
            return _FOLDS[key]
    folds = _folds(codes, settings, groups)
    for train, test in folds:
        train.flags.writeable = test.flags.writeable = False
    with _FOLDS_LOCK:
        _FOLDS[key] = folds
        while len(_FOLDS) > _FOLDS_KEPT:
            _FOLDS.popitem(last=False)
    return folds


def _folds(
    codes: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds; fewer folds when the smallest class cannot fill one per fold. With
    `groups`, stratified group folds: no group is split between train and test."""
    if groups is not None:
        n_groups = len(np.unique(groups))
        smallest_groups = min(len(np.unique(groups[codes == c])) for c in np.unique(codes))
        folds = max(2, min(settings.folds, n_groups, max(smallest_groups, 2)))
        if n_groups < 2:
            raise ValueError("a probe needs examples from at least two pictures")
        kfold = StratifiedGroupKFold(folds, shuffle=True, random_state=settings.seed)
        found = kfold.split(np.zeros(len(codes)), codes, groups)
        return [(train, test) for train, test in found if len(train) and len(test)]
    smallest = int(np.bincount(codes).min())
    if smallest < 2:  # only with min_per_class=1: a singleton class cannot be stratified
        folds = min(settings.folds, len(codes))
        return list(KFold(folds, shuffle=True, random_state=settings.seed).split(codes))
    kfold = StratifiedKFold(
        n_splits=min(settings.folds, smallest), shuffle=True, random_state=settings.seed
    )
    return list(kfold.split(np.zeros(len(codes)), codes))


def _cross_validate(
    X: np.ndarray,
    codes: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    kind: ProbeKind,
    settings: ProbeSettings,
) -> _CrossValidation:
    """Fit on each training fold, score on its test fold."""
    return _cross_validate_each(X, [codes], splits, kind, settings)[0]


def _cross_validate_each(
    X: np.ndarray,
    labellings: Sequence[np.ndarray],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    kind: ProbeKind,
    settings: ProbeSettings,
) -> list[_CrossValidation]:
    """`_cross_validate` for several labellings of the same rows on the same folds. The task,
    its control and the shuffled control share the folds, so their accuracies differ by the
    labels alone. Linear probes of every (labelling, fold) are fitted together
    (`batched_logistic`: scikit-learn's objective without its per-fit overhead); MLPs one by
    one."""
    if kind == "linear":
        predicted = _linear_fold_predictions(X, labellings, splits, settings)
    else:
        predicted = [
            [
                _fit_predict(X[train], codes[train], X[test], kind, settings)
                for train, test in splits
            ]
            for codes in labellings
        ]
    results = []
    for codes, per_fold in zip(labellings, predicted, strict=True):
        hits = [
            int((p == codes[test]).sum()) for p, (_, test) in zip(per_fold, splits, strict=True)
        ]
        accuracies = [h / len(test) for h, (_, test) in zip(hits, splits, strict=True)]
        results.append(
            _CrossValidation(float(np.mean(accuracies)), float(np.std(accuracies)), sum(hits))
        )
    return results


def _linear_fold_predictions(
    X: np.ndarray,
    labellings: Sequence[np.ndarray],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    settings: ProbeSettings,
) -> list[list[np.ndarray]]:
    """Test-fold predictions of `make_probe('linear')` (standardised on the training fold,
    then LogisticRegression(C, lbfgs, max_iter)) for every (labelling, fold), all fitted at
    once. A training fold with one class predicts that class, as `_fit_predict` does."""
    batch = batched_logistic.fold_batch(X, list(labellings), list(splits), settings.C)
    W = batched_logistic.fit(batch, tol=_SKLEARN_TOL, max_iter=settings.max_iter)
    folds = len(splits)
    return [
        [
            batched_logistic.predict(batch, W, np.array([index * folds + f]), test)[0]
            for f, (_, test) in enumerate(splits)
        ]
        for index in range(len(labellings))
    ]


def _fit_predict(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    kind: ProbeKind,
    settings: ProbeSettings,
) -> np.ndarray:
    """Predictions for X_test. A training fold with one class (possible in a control task on a
    tiny set) predicts that class: the best any probe can do with it."""
    if np.unique(y_train).size < 2:
        return np.full(len(X_test), y_train[0])
    return make_probe(kind, settings).fit(X_train, y_train).predict(X_test)


# --------------------------------------------------------------------------------------------
# Significance


def two_proportion_z_p_value(correct: int, control_correct: int, n: int) -> float:
    """One-sided p-value that the probe's accuracy exceeds the control's: a two-proportion
    z-test, z = (p1 - p2) / sqrt(p (1 - p) 2 / n) with the pooled proportion p, where the
    counts are each example's one cross-validated prediction (all folds pooled). VLM-Lens's own
    test has the same statistic but is two-sided and counts a held-out split only."""
    p1, p2 = correct / n, control_correct / n
    pooled = (correct + control_correct) / (2 * n)
    spread = np.sqrt(pooled * (1 - pooled) * 2 / n)
    if spread == 0:  # both all right or both all wrong: no difference to test
        return 0.5
    return float(norm.sf((p1 - p2) / spread))


def permutation_p_value(
    X: np.ndarray,
    codes: np.ndarray,
    kind: ProbeKind,
    settings: ProbeSettings,
    accuracy: float,
    groups: np.ndarray | None = None,
) -> float:
    """p = (1 + #{null statistic >= observed}) / (1 + permutations), NaN when disabled.

    With `null='refit'` the statistic is the probe's own CV accuracy (`accuracy`), refitted on
    every permutation with folds stratified on the permuted labels. With `null='ridge'` it is
    the CV accuracy of a closed-form kernel ridge classifier, computed on the true labels and on
    every permutation alike; see `_ridge_null_counts`.
    """
    if settings.permutations == 0:
        return float("nan")
    if settings.null == "refit":
        null = _refit_null_accuracies(X, codes, kind, settings, groups)
        exceed = int((null >= accuracy - 1e-12).sum())
    else:
        observed, null = _ridge_null_counts(X, codes, kind, settings, groups)
        exceed = int((null >= observed).sum())
    return (1 + exceed) / (1 + settings.permutations)


def _permuted(codes: np.ndarray, settings: ProbeSettings) -> Iterator[np.ndarray]:
    rng = np.random.default_rng([settings.seed, _PERMUTATION_STREAM])
    for _ in range(settings.permutations):
        yield rng.permutation(codes)


def _refit_null_accuracies(
    X: np.ndarray,
    codes: np.ndarray,
    kind: ProbeKind,
    settings: ProbeSettings,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """The probe retrained on each permutation: exact, and `permutations` times the cost."""
    return np.array(
        [
            _cross_validate(
                X, permuted, _splits(permuted, settings, groups), kind, settings
            ).accuracy
            for permuted in _permuted(codes, settings)
        ]
    )


def _ridge_null_counts(
    X: np.ndarray,
    codes: np.ndarray,
    kind: ProbeKind,
    settings: ProbeSettings,
    groups: np.ndarray | None = None,
) -> tuple[int, np.ndarray]:
    """Correct CV predictions of a kernel ridge classifier on the true labels and on each
    permutation, all permutations solved together.

    Why this is a valid test: a permutation test is exact for any statistic computed the same
    way on the observed and the permuted labels. Ridge regression on one-hot labels has a closed
    form that is linear in the labels, so per fold one Cholesky factorisation serves the true
    labels and every permutation (a matrix product), where refitting a logistic regression
    would cost `permutations x folds` fits. The folds are unstratified (they do not depend on
    the labels) so that the statistic is the same function for every labelling. The kernel is
    linear for the linear probe and RBF for the MLP probe, so that a non-linearly encoded
    concept (an XOR) is detectable by the test as it is by the MLP.
    """
    Z = _standardise(X)
    labellings = np.stack([codes, *_permuted(codes, settings)], axis=1)  # (n, 1 + P)
    k = int(codes.max()) + 1
    correct = np.zeros(labellings.shape[1], dtype=np.int64)
    if groups is None:
        folds = KFold(
            n_splits=min(settings.folds, len(codes)), shuffle=True, random_state=settings.seed
        ).split(Z)
    else:  # label-free group folds: the same function of every labelling
        folds = GroupKFold(n_splits=min(settings.folds, len(np.unique(groups)))).split(
            Z, groups=groups
        )
    for train, test in folds:
        predict = _ridge_fold(Z[train], Z[test], kind, settings.ridge_alpha)
        # Blocks of labellings keep the one-hot targets near 64 MB however many classes.
        block = max(1, 2**24 // (len(train) * k))
        for first in range(0, labellings.shape[1], block):
            chunk = slice(first, first + block)
            targets = np.eye(k, dtype=np.float32)[labellings[train, chunk]]  # (n_tr, m, k)
            prior = targets.mean(axis=0)  # the intercept: scores start at class frequencies
            centred = (targets - prior).reshape(len(train), -1)
            scores = predict(centred).reshape(len(test), -1, k) + prior
            correct[chunk] += (scores.argmax(axis=2) == labellings[test, chunk]).sum(axis=0)
    return int(correct[0]), correct[1:]


def _ridge_fold(
    Z_train: np.ndarray, Z_test: np.ndarray, kind: ProbeKind, alpha: float
) -> Callable[[np.ndarray], np.ndarray]:
    """Kernel ridge fitted on one training fold: a function from training targets (n_train, m)
    to test scores (n_test, m).

    The linear kernel is solved in the primal (a dim x dim system) when dim <= n_train, so
    memory and time grow with n, not n^2; it gives the same predictions as the dual, since
    K (K + a I)^-1 = Z (Z'Z + a dim I)^-1 Z' for K = Z Z' / dim. The RBF kernel needs the dual
    (n_train x n_train): fine for thousands of images, heavy beyond some 20,000.
    """
    dim = Z_train.shape[1]
    if kind == "linear" and dim <= len(Z_train):
        system = Z_train.T @ Z_train + alpha * dim * np.eye(dim, dtype=Z_train.dtype)
        factor = cho_factor(system, lower=True)
        return lambda targets: Z_test @ cho_solve(factor, Z_train.T @ targets)
    gram = _kernel(Z_train, Z_train, kind)
    gram[np.diag_indices_from(gram)] += alpha
    factor = cho_factor(gram, lower=True, overwrite_a=True)
    cross = _kernel(Z_test, Z_train, kind)
    return lambda targets: cross @ cho_solve(factor, targets)


def _standardise(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature over all examples (labels play no part, so every
    permutation sees the same features); constant features become zeros."""
    X = X.astype(np.float32)
    spread = X.std(axis=0)
    spread[spread == 0] = 1.0
    return (X - X.mean(axis=0)) / spread


def _kernel(A: np.ndarray, B: np.ndarray, kind: ProbeKind) -> np.ndarray:
    """Kernel matrix with a unit-scale diagonal, so one ridge strength suits every width."""
    dim = max(A.shape[1], 1)
    linear = A @ B.T / dim
    if kind == "linear":
        return linear
    a = np.einsum("ij,ij->i", A, A) / dim
    b = np.einsum("ij,ij->i", B, B) / dim
    distances = np.maximum(a[:, None] + b[None, :] - 2 * linear, 0.0)
    return np.exp(-distances / 2)  # RBF with gamma = 1 / (2 dim) in the standardised units


@contextmanager
def probing_context(settings: ProbeSettings) -> Iterator[None]:
    """Set once around all the probes of a call, since both settings are process-wide (and
    `warnings.catch_warnings` is not thread-safe, so the pool's threads must not touch it).

    ConvergenceWarning is silenced: a probe stopped at max_iter is still a classifier and its
    held-out accuracy is what is measured, and hundreds of identical warnings hide real ones.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if settings.blas_threads is None:
            yield
            return
        with threadpool_limits(limits=settings.blas_threads):
            yield
