"""Similarity math: how alike two representations are, and which Stroop cue a layer follows.

Three families of pure functions on arrays (no Dagster, no warehouse; callers load the vectors):

- `linear_cka`: linear centred kernel alignment (Kornblith et al. 2019, "Similarity of Neural
  Network Representations Revisited") between two representations of the same examples,
  biased or with the unbiased HSIC estimator (Song et al. 2012), which Nguyen et al. (2021,
  "Do Wide and Deep Networks Learn the Same Things?") use because the biased estimate of two
  *unrelated* wide representations is far from 0 at realistic n.
- `total_variation` and `distribution`: how far apart two answer distributions are.
- `separation_curve`, `components_to_separate` and `dominance`: the VLM-Lens Stroop study, PCA
  over colour concepts, asking how many principal components separate each cue (word, font
  colour, background colour) and which cue wins when they disagree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

NONE_LABEL = "(none)"

# ---------------------------------------------------------------------------------------------
# CKA


def _as_matrix(a: np.ndarray, name: str) -> np.ndarray:
    """A finite 2-D float64 copy: CKA's sums of squares lose too much in float32."""
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n examples, features), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return m


def _is_constant(centred: np.ndarray, original: np.ndarray) -> bool:
    """True when centring left (numerically) nothing: every column was constant.

    The column mean of n equal floats can differ from them by an ulp, so exact zero is too strict.
    """
    scale = float(np.abs(original).max(initial=0.0))
    return float(np.abs(centred).max(initial=0.0)) <= 1e-12 * max(scale, 1e-300)


def _cross(a: np.ndarray, b: np.ndarray) -> float:
    """sum_ij K_ij L_ij for the linear kernels K = A A^T and L = B B^T, the cheaper way.

    It equals ||B^T A||_F^2 (feature form, about n p q operations) and sum(K * L) (Gram form,
    about n^2 (p + q)); the feature form wins when the widths are small relative to n.
    """
    n, p = a.shape
    q = b.shape[1]
    if p * q <= n * (p + q):
        return float(np.sum((b.T @ a) ** 2))
    return float(np.sum((a @ a.T) * (b @ b.T)))


def _unbiased_hsic(a: np.ndarray, b: np.ndarray) -> float:
    """Song et al.'s (2012) unbiased HSIC of the linear kernels of A and B (n >= 4).

    HSIC_u = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), with K~, L~
    the kernels with their diagonals zeroed. Every term is written through row sums and
    diagonals, so no n x n matrix is built unless `_cross` finds the Gram form cheaper.
    """
    n = a.shape[0]
    dk = np.einsum("ij,ij->i", a, a)  # diag(K)
    dl = np.einsum("ij,ij->i", b, b)
    rk = a @ a.sum(axis=0) - dk  # K~ 1
    rl = b @ b.sum(axis=0) - dl
    trace = _cross(a, b) - float(dk @ dl)
    total = float(rk.sum()) * float(rl.sum()) / ((n - 1) * (n - 2))
    paired = 2.0 * float(rk @ rl) / (n - 2)
    return (trace + total - paired) / (n * (n - 3))


def linear_cka(X: np.ndarray, Y: np.ndarray, unbiased: bool = False) -> float:
    """Linear CKA between two representations of the same n examples (rows aligned).

    X is (n, p) and Y (n, q); the widths may differ. Columns are centred, then

        CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),  K = X X^T, L = Y Y^T,

    which for the biased estimator is ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), computed
    in feature or Gram form, whichever is cheaper. It is invariant to orthogonal transforms and
    isotropic scaling of either side, not to arbitrary invertible linear maps.

    With `unbiased=True` each HSIC is Song et al.'s unbiased estimator (needs n >= 4), so two
    independent representations score near 0 instead of around p q / (n p + p^2); the value can
    then be slightly negative, and is NaN in the degenerate case of a non-positive self-HSIC.

    Returns 0.0 when either representation is constant (it carries no information to align).
    """
    x = _as_matrix(X, "X")
    y = _as_matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"X and Y must have the same rows (examples): {x.shape[0]} != {y.shape[0]}"
        )
    n = x.shape[0]
    if n < (4 if unbiased else 2):
        raise ValueError(f"linear_cka needs n >= {4 if unbiased else 2} examples, got {n}")
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    if _is_constant(xc, x) or _is_constant(yc, y):
        return 0.0
    if unbiased:
        xy, xx, yy = _unbiased_hsic(xc, yc), _unbiased_hsic(xc, xc), _unbiased_hsic(yc, yc)
        if xx <= 0.0 or yy <= 0.0:
            return float("nan")
    else:
        xy, xx, yy = _cross(xc, yc), _cross(xc, xc), _cross(yc, yc)
    return float(xy / math.sqrt(xx * yy))


# ---------------------------------------------------------------------------------------------
# Distributions


def distribution(values: Iterable[str | None]) -> dict[str, float]:
    """Relative frequencies of the values; None (no answer parsed) counts as "(none)".

    Missing answers stay in the denominator on purpose: a model that stops answering has moved
    its distribution, and `total_variation` should see it. An empty input gives {}.
    """
    counts = Counter(NONE_LABEL if v is None else v for v in values)
    total = sum(counts.values())
    return {k: c / total for k, c in sorted(counts.items())}


def _normalised(d: Mapping[str, float], name: str) -> dict[str, float]:
    """The distribution scaled to sum 1, so raw counts and frequencies compare alike."""
    values = {k: float(v) for k, v in d.items()}
    if any(not math.isfinite(v) or v < 0 for v in values.values()):
        raise ValueError(f"{name} must hold finite, non-negative masses")
    total = sum(values.values())
    if total <= 0:
        raise ValueError(f"{name} is empty or sums to zero; it is not a distribution")
    return {k: v / total for k, v in values.items()}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """0.5 * sum_i |p_i - q_i| over the union of keys (a missing key has mass 0).

    Both inputs are normalised to sum 1 first, so counts may be passed directly. The result lies
    in [0, 1]: 0 for identical distributions, 1 for disjoint supports.
    """
    pn, qn = _normalised(p, "p"), _normalised(q, "q")
    return 0.5 * sum(abs(pn.get(k, 0.0) - qn.get(k, 0.0)) for k in pn.keys() | qn.keys())


# ---------------------------------------------------------------------------------------------
# Stroop: concept separation and cue dominance


def _labels_array(values: Sequence[Any], n: int, cue: str) -> np.ndarray:
    """One cue's labels as strings, checked against the number of rows."""
    arr = np.array([str(v) for v in values], dtype=object)
    if arr.shape[0] != n:
        raise ValueError(f"cue {cue!r} has {arr.shape[0]} labels for {n} rows")
    return arr


def separation_curve(
    X: np.ndarray,
    labels: Mapping[str, Sequence[str]],
    max_components: int = 10,
    neighbours: int = 5,
    folds: int = 5,
    seed: int = 0,
) -> list[dict]:
    """How well the first k principal components separate each cue, for k = 1, 2, ...

    For each cue, stratified `folds`-fold cross-validation (shuffled with `seed`): inside each
    fold the scaler and the PCA are fitted on the training part only, so the held-out items
    never shape the components (no leakage). A nearest-centroid classifier and a k-NN classifier
    (`neighbours` neighbours, fewer if a training part is smaller) are trained on the first k
    components. Accuracy is pooled over folds (correct held-out predictions / n).

    k runs from 1 to min(max_components, features, smallest training-part size). Rows, cue by
    cue in `labels` order, then by k: {"cue", "components", "nearest_centroid_accuracy",
    "knn_accuracy"}. Raises ValueError if some class of a cue has fewer than `folds` items.
    """
    x = _as_matrix(X, "X")
    n, dim = x.shape
    if folds < 2:
        raise ValueError("folds must be at least 2")
    smallest_train = n - math.ceil(n / folds)
    top = min(max_components, dim, smallest_train)
    if top < 1:
        raise ValueError(f"no components to fit: n={n}, features={dim}, folds={folds}")
    rows: list[dict] = []
    for cue, values in labels.items():
        y = _labels_array(values, n, cue)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise ValueError(f"cue {cue!r} has a single class; nothing to separate")
        if counts.min() < folds:
            raise ValueError(
                f"cue {cue!r}: class {classes[counts.argmin()]!r} has {counts.min()} items, "
                f"fewer than folds={folds}"
            )
        correct_nc = np.zeros(top, dtype=np.int64)
        correct_knn = np.zeros(top, dtype=np.int64)
        codes = np.unique(y, return_inverse=True)[1]
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for train, test in splitter.split(x, y):
            z_train, z_test = _pca_scores(x[train], x[test], top)
            centroid, knn, tied = _separation_predictions(
                z_train, codes[train], z_test, len(classes), neighbours
            )
            if len(tied):
                knn[:, tied] = _tied_knn(x[train], codes[train], x[test], top, tied, neighbours)
            correct_nc += (centroid == codes[test][:, None]).sum(axis=0)
            correct_knn += (knn == codes[test][:, None]).sum(axis=0)
        rows.extend(
            {
                "cue": cue,
                "components": k,
                "nearest_centroid_accuracy": float(correct_nc[k - 1] / n),
                "knn_accuracy": float(correct_knn[k - 1] / n),
            }
            for k in range(1, top + 1)
        )
    return rows


def _pca_scores(train: np.ndarray, test: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Both parts on the first `top` principal components of the standardised training part
    (StandardScaler, then PCA with the full SVD, fitted on `train` only). A component's sign is
    arbitrary, and the distances every classifier here uses do not depend on it."""
    mean = train.mean(axis=0)
    spread = train.std(axis=0)
    spread[spread == 0] = 1.0
    scaled_train = (train - mean) / spread
    centre = scaled_train.mean(axis=0)
    _, _, components = np.linalg.svd(scaled_train - centre, full_matrices=False)
    basis = components[:top].T
    return (scaled_train - centre) @ basis, ((test - mean) / spread - centre) @ basis


def _separation_predictions(
    z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, n_classes: int, neighbours: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nearest-centroid predictions, k-NN predictions, the columns whose k-NN a tie decides)
    on the first k components, each prediction (n_test, K) for every k = 1..K at once.

    Nearest centroid as sklearn's NearestCentroid (the closest class mean, ties to the first
    class); uniform k-NN as KNeighborsClassifier (the majority of the `neighbours` nearest
    training rows, ties to the first class). A prefix of the components is a prefix of each
    squared distance's sum, so one cumulative sum serves every k. Where training rows tie at
    the last neighbour's distance (duplicate vectors), which of them count is the order of
    scikit-learn's search tree: those k are returned for `_tied_knn`."""
    present = np.unique(y_train)
    centroids = np.stack([z_train[y_train == c].mean(axis=0) for c in present])
    to_centroid = np.cumsum((z_test[:, None, :] - centroids[None, :, :]) ** 2, axis=2)
    nearest_class = present[to_centroid.argmin(axis=1)]  # (n_test, K)
    to_train = np.cumsum((z_test[:, None, :] - z_train[None, :, :]) ** 2, axis=2)
    k = min(neighbours, len(z_train))
    order = np.argsort(to_train, axis=1, kind="stable")  # (n_test, n_train, K)
    votes = np.zeros((len(z_test), z_train.shape[1], n_classes), dtype=np.int64)
    np.add.at(
        votes,
        (np.arange(len(z_test))[:, None, None], np.arange(z_train.shape[1])[None, None, :],
         y_train[order[:, :k, :]]),
        1,
    )  # fmt: skip
    tied = np.zeros(0, dtype=np.int64)
    if k < len(z_train):  # the k-th and (k+1)-th at one distance, and of different classes
        ranked = np.take_along_axis(to_train, order[:, k - 1 : k + 1, :], axis=1)
        at_boundary = to_train == ranked[:, :1, :]
        labels = y_train[None, :, None]
        mixed = np.where(at_boundary, labels, n_classes).min(axis=1) != np.where(
            at_boundary, labels, -1
        ).max(axis=1)
        tied = np.flatnonzero(((ranked[:, 0] == ranked[:, 1]) & mixed).any(axis=0))
    return nearest_class, votes.argmax(axis=2), tied


def _tied_knn(
    train: np.ndarray,
    y_train: np.ndarray,
    test: np.ndarray,
    top: int,
    columns: np.ndarray,
    neighbours: int,
) -> np.ndarray:
    """k-NN predictions (n_test, len(columns)) by scikit-learn's own scaler, PCA and
    classifier, for the k where a tie makes its search order matter."""
    scaler = StandardScaler().fit(train)
    pca = PCA(n_components=top, svd_solver="full").fit(scaler.transform(train))
    z_train = pca.transform(scaler.transform(train))
    z_test = pca.transform(scaler.transform(test))
    k = min(neighbours, len(train))
    return np.stack(
        [
            KNeighborsClassifier(n_neighbors=k)
            .fit(z_train[:, : column + 1], y_train)
            .predict(z_test[:, : column + 1])
            for column in columns
        ],
        axis=1,
    )


def components_to_separate(
    rows: Iterable[Mapping], threshold: float = 0.9
) -> dict[str, int | None]:
    """Per cue, the fewest components whose nearest-centroid accuracy reaches `threshold`.

    None when no k on the curve reaches it. Cues keep the order of their first row.
    """
    best: dict[str, int | None] = {}
    for row in rows:
        cue = row["cue"]
        best.setdefault(cue, None)
        if row["nearest_centroid_accuracy"] >= threshold:
            k = int(row["components"])
            current = best[cue]
            best[cue] = k if current is None else min(current, k)
    return best


def _prototype_colours(
    cue_labels: Mapping[str, np.ndarray], rows: np.ndarray, agree_on: Sequence[str] | None
) -> np.ndarray:
    """Each prototype row's colour, or "" where the row defines none.

    agree_on=None: the colour that at least two cues share (a majority; with three cues and at
    most one agreeing pair, it is unique). Otherwise the colour shared by all of `agree_on`.
    """
    out = np.full(len(rows), "", dtype=object)
    cues = list(cue_labels) if agree_on is None else list(agree_on)
    for j, i in enumerate(rows):
        votes = Counter(cue_labels[c][i] for c in cues)
        colour, count = votes.most_common(1)[0]
        if agree_on is None:
            tied = sum(1 for v in votes.values() if v == count) > 1
            if count >= 2 and not tied:
                out[j] = colour
        elif count == len(cues):
            out[j] = colour
    return out


def dominance(
    X: np.ndarray,
    labels: Mapping[str, Sequence[str]],
    disagree: Sequence[bool] | np.ndarray,
    components: int | None = None,
    *,
    agree_on: Sequence[str] | None = None,
) -> dict[str, float]:
    """Which cue the representation follows when the cues disagree (Stroop conflict items).

    Assumptions: every cue in `labels` (e.g. "word", "font", "background") names a value from
    ONE shared vocabulary (colour names), and on every disagreeing item (`disagree` True) all
    cues name different colours, so a prediction matches at most one cue (checked).

    Method: standardise X (and, with `components`, project on that many principal components;
    both fitted on all items, which uses no labels). From the non-disagreeing items build one
    prototype per colour: the mean vector of the items whose colour is that colour, where an
    item's colour is

    - agree_on=None (default): the colour at least two cues share. In the Stroop generator's
      design (word == font, or word == background; background never equals font) every
      non-conflict item has exactly one such colour. This keeps every cue visible: a layer that
      follows the font gets clean prototypes from the word == font items and diluted (not
      misleading) ones from the word == background items, and symmetrically for background.
    - agree_on=("word", "font"): the colour those cues agree on (congruent items only). Simpler,
      but a layer that follows a cue left out (here the background) is seen only indirectly,
      through that cue never sharing the prototype's colour, so its share is underestimated.

    Each disagreeing item is assigned the colour of its nearest prototype (Euclidean), and the
    result is the share of disagreeing items whose predicted colour equals each cue's label,
    plus "none" for predictions matching no cue; the shares sum to 1. A colour with no prototype
    can never be predicted.

    Raises ValueError when there are no disagreeing items, when fewer than two colours have
    prototype data, or when a disagreeing item has two cues on the same colour.
    """
    x = _as_matrix(X, "X")
    n = x.shape[0]
    if not labels:
        raise ValueError("labels must name at least one cue")
    if "none" in labels:
        raise ValueError('"none" is reserved for predictions matching no cue; rename that cue')
    cue_labels = {cue: _labels_array(values, n, cue) for cue, values in labels.items()}
    if agree_on is not None:
        unknown = [c for c in agree_on if c not in cue_labels]
        if unknown or len(agree_on) < 2:
            raise ValueError(f"agree_on must name at least two cues of labels; got {agree_on!r}")
    mask = np.asarray(disagree, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"disagree must have one flag per row ({n}), got shape {mask.shape}")
    conflict = np.flatnonzero(mask)
    if conflict.size == 0:
        raise ValueError("no disagreeing items: dominance is only defined on cue conflicts")
    for i in conflict:
        named = [cue_labels[c][i] for c in cue_labels]
        if len(set(named)) != len(named):
            raise ValueError(
                f"disagreeing item at row {i} has cues on the same colour ({named}); "
                "every cue must differ on a disagreeing item"
            )

    z = StandardScaler().fit_transform(x)
    if components is not None:
        z = PCA(n_components=components, svd_solver="full").fit_transform(z)

    rest = np.flatnonzero(~mask)
    colours = _prototype_colours(cue_labels, rest, agree_on)
    names = sorted({c for c in colours if c})
    if len(names) < 2:
        raise ValueError(
            "no prototype data: fewer than two colours have non-disagreeing items on which "
            f"the cues agree (found {names})"
        )
    prototypes = np.stack([z[rest[colours == c]].mean(axis=0) for c in names])
    distances = ((z[conflict, None, :] - prototypes[None, :, :]) ** 2).sum(axis=2)
    predicted = np.asarray(names, dtype=object)[distances.argmin(axis=1)]

    shares: dict[str, float] = {}
    matched = np.zeros(conflict.size, dtype=bool)
    for cue, values in cue_labels.items():
        hit = predicted == values[conflict]
        shares[cue] = float(hit.mean())
        matched |= hit
    shares["none"] = float((~matched).mean())
    return shares
