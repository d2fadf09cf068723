"""VLM-Lens's own probe protocol (`protocol: vlm-lens`), beside the cross-validated one.

What VLM-Lens's `src/probe/main.py` (compling-wat/vlm-lens) does for one layer's vectors, and
what this module does the same way:

1. Hold out a test split: `train_test_split(test_size=0.2, random_state=42)`, unstratified.
   Here rows that share a picture (a scene asked six questions) stay on one side, by a
   `GroupShuffleSplit` over pictures; with one row per picture the split is VLM-Lens's own.
2. Choose the hyper-parameters: every combination of the listed `training` values (batch size,
   epochs, learning rate; C for the linear probe) is trained on 4/5 of the training split and
   scored on the other 1/5 (`KFold(5, shuffle=True, random_state=42)`, grouped by picture here
   too); the combination with the lowest mean validation cross-entropy wins. The test split
   plays no part.
3. Train the probe on the whole training split with that combination; score it on the test
   split. The probe is VLM-Lens's: `num_layers` Linear layers of width `hidden_size` with an
   activation between them, trained in torch with AdamW and cross-entropy in shuffled
   mini-batches (kind `mlp`); or, VLM-Lens's `num_layers: 1`, scikit-learn's multinomial
   LogisticRegression (kind `linear`).
4. The shuffled control: the labels of all rows permuted once, the same split, the same chosen
   combination, trained and scored on the permuted labels.
5. `statsmodels.proportions_ztest([correct, shuffled_correct], [n_test, n_test])`: a two-sided
   two-proportion z-test with the pooled proportion, probe against shuffled control on the test
   split (`two_sided_z_test`; statsmodels itself is not a dependency).

Unlike VLM-Lens, every random draw is seeded (its label shuffle and weight initialisation are
not), each trained probe is kept as a safetensors file (weights, standardisation, class names;
`SavedProbe`), and each held-out row's prediction is returned for the `probe_predictions`
table. Arrays and the warehouse in, rows out; no Dagster here.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from scipy.special import logsumexp
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, train_test_split
from torch import nn

from lens_assets.analyses.probe_maths import ProbeSettings, probe_inputs, probing_context
from lens_assets.analyses.probing import picture_groups, probed_concepts
from lens_assets.analyses.reading import (
    answer_labels,
    labelled_datasets,
    load_labels,
    load_vectors,
    pooled_layers,
    row_images,
)
from lens_assets.analyses.vlm_lens_settings import VlmLensSettings
from lens_assets.resources.warehouse import Warehouse

PROTOCOL = "vlm-lens"
FORMAT = "lensflow-probe/1"
_SHUFFLE_STREAM = 2  # the label shuffle's own random stream, apart from the split's
_NEVER = -1e4  # the bias of a class the linear probe never saw: it is never predicted
_MIN_PROBABILITY = 1e-10  # VLM-Lens's floor in the linear probe's validation loss
PROBES_DIR = "probes"  # under the warehouse root


class TooFewRows(ValueError):
    """A concept with too few rows for a held-out split and CV on the rest."""


# --------------------------------------------------------------------------------------------
# A trained probe, as numbers


@dataclass
class SavedProbe:
    """A probe as it is kept: standardisation, Linear layers in order, the activation between
    them, and the class each output names. Predictions before saving and after loading come
    from this one `logits`, on the same stored arrays, so they are identical."""

    classes: list[str]
    mean: np.ndarray  # (dim,) float32: subtracted first
    scale: np.ndarray  # (dim,) float32: divided by next
    weights: list[np.ndarray]  # (out, in) per Linear layer
    biases: list[np.ndarray]  # (out,)
    activation: str  # torch.nn name, between the layers
    metadata: dict[str, str] = field(default_factory=dict)

    def logits(self, X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy((np.asarray(X, dtype=np.float32) - self.mean) / self.scale)
        act = getattr(nn, self.activation)()
        with torch.no_grad():
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                weight, bias = torch.from_numpy(w), torch.from_numpy(b)
                x = nn.functional.linear(x.to(weight.dtype), weight, bias)
                if i < len(self.weights) - 1:
                    x = act(x)
        return x.double().numpy()

    def predict_codes(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(axis=1)

    def predict(self, X: np.ndarray) -> list[str]:
        """The class name of each row of X (raw activations, as stored in the warehouse)."""
        return [self.classes[code] for code in self.predict_codes(X)]

    def losses(self, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Cross-entropy per row, VLM-Lens's validation loss."""
        logits = self.logits(X)
        log_p = logits[np.arange(len(codes)), codes] - logsumexp(logits, axis=1)
        return -np.maximum(log_p, math.log(_MIN_PROBABILITY))

    def save(self, path: Path) -> None:
        tensors = {"mean": self.mean, "scale": self.scale}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = w, b
        metadata = {
            **self.metadata,
            "format": FORMAT,
            "classes": json.dumps(self.classes),
            "activation": self.activation,
            "layers": str(len(self.weights)),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata)

    @classmethod
    def load(cls, path: str | Path) -> SavedProbe:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a LensFlow probe (format {metadata.get('format')!r}, expected "
                f"{FORMAT!r}); probes are written by the probe_results asset with protocol "
                "vlm-lens"
            )
        tensors = load_file(str(path))
        layers = int(metadata["layers"])
        return cls(
            classes=json.loads(metadata["classes"]),
            mean=tensors["mean"],
            scale=tensors["scale"],
            weights=[tensors[f"layers.{i}.weight"] for i in range(layers)],
            biases=[tensors[f"layers.{i}.bias"] for i in range(layers)],
            activation=metadata["activation"],
            metadata={k: v for k, v in metadata.items() if k not in ("format", "layers")},
        )


# --------------------------------------------------------------------------------------------
# Training one probe


def _standardisation(X: np.ndarray, settings: VlmLensSettings) -> tuple[np.ndarray, np.ndarray]:
    dim = X.shape[1]
    if not settings.standardise:
        return np.zeros(dim, dtype=np.float32), np.ones(dim, dtype=np.float32)
    scale = X.std(axis=0).astype(np.float32)
    scale[scale == 0] = 1.0
    return X.mean(axis=0).astype(np.float32), scale


def train_probe(
    X: np.ndarray,
    codes: np.ndarray,
    classes: Sequence[str],
    kind: str,
    hyper: dict[str, Any],
    settings: VlmLensSettings,
) -> SavedProbe:
    """One probe fitted on (X, codes) with one grid point: VLM-Lens's `train`."""
    X = np.asarray(X, dtype=np.float32)
    mean, scale = _standardisation(X, settings)
    Z = (X - mean) / scale
    if kind == "linear":
        weights, biases = _fit_linear(Z, codes, len(classes), hyper, settings)
        activation = "Identity"
    elif kind == "mlp":
        weights, biases = _fit_mlp(Z, codes, len(classes), hyper, settings)
        activation = settings.activation
    else:
        raise ValueError(f"unknown probe kind {kind!r}: use 'linear' or 'mlp'")
    return SavedProbe(list(classes), mean, scale, weights, biases, activation)


def _fit_linear(
    Z: np.ndarray, codes: np.ndarray, k: int, hyper: dict[str, Any], settings: VlmLensSettings
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """VLM-Lens's `num_layers < 2` probe: a multinomial LogisticRegression, as one Linear layer
    of k outputs (a class absent from the training rows gets a bias it never wins with)."""
    present = np.unique(codes)
    W = np.zeros((k, Z.shape[1]), dtype=np.float64)
    b = np.full(k, _NEVER, dtype=np.float64)
    if len(present) == 1:  # one class to learn: predict it
        b[present[0]] = 0.0
        return [W], [b]
    model = LogisticRegression(
        C=hyper["sklearn_C"],
        solver=settings.sklearn_solver,
        max_iter=hyper["sklearn_max_iter"],
        random_state=settings.seed,
    ).fit(Z, codes)
    if model.coef_.shape[0] == 1:  # binary: sklearn keeps one row, the second class's logit
        b[present[0]] = 0.0
        W[present[1]], b[present[1]] = model.coef_[0], model.intercept_[0]
    else:
        W[present], b[present] = model.coef_, model.intercept_
    return [W], [b]


def _fit_mlp(
    Z: np.ndarray, codes: np.ndarray, k: int, hyper: dict[str, Any], settings: VlmLensSettings
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """VLM-Lens's torch probe: Linear(dim, h), act, (num_layers - 2) x [Linear(h, h), act],
    Linear(h, k); `optimizer` at `learning_rate`, cross-entropy, `num_epochs` passes over
    shuffled mini-batches of `batch_size` (the last one partial, as its DataLoader).

    The initialisation is nn.Linear's own, drawn from a generator seeded here rather than the
    global one, so a probe is the same whatever ran before it."""
    device = torch.device(settings.device)
    generator = torch.Generator().manual_seed(settings.seed)
    widths = [Z.shape[1]] + [settings.hidden_size] * (settings.num_layers - 1) + [k]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(n_in, n_out)
        bound = 1 / math.sqrt(n_in)
        with torch.no_grad():
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(getattr(nn, settings.activation)())
    model = nn.Sequential(*layers).to(device)
    optimizer = getattr(torch.optim, hyper["optimizer"])(
        model.parameters(), lr=hyper["learning_rate"]
    )
    loss_fn = nn.CrossEntropyLoss()
    X_t = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32)).to(device)
    y_t = torch.from_numpy(codes.astype(np.int64)).to(device)
    batch = hyper["batch_size"]
    model.train()
    for _ in range(hyper["num_epochs"]):
        order = torch.randperm(len(Z), generator=generator).to(device)
        for start in range(0, len(Z), batch):
            chosen = order[start : start + batch]
            optimizer.zero_grad()
            loss_fn(model(X_t[chosen]), y_t[chosen]).backward()
            optimizer.step()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().cpu().numpy().copy() for m in linears]
    biases = [m.bias.detach().cpu().numpy().copy() for m in linears]
    return weights, biases


# --------------------------------------------------------------------------------------------
# The protocol on one concept


@dataclass
class HeldOutResult:
    """One probe of one concept under VLM-Lens's protocol."""

    kind: str
    accuracy: float  # on the held-out test split
    shuffled_accuracy: float  # the shuffled control on the same split
    z_p_two_sided: float  # VLM-Lens's test: proportions_ztest, two-sided
    z_p_one_sided: float  # the same z, probe above shuffled control
    n: int  # rows probed, train and test
    n_test: int
    classes: int
    hyperparameters: dict[str, Any]  # the grid point CV chose
    validation_losses: list[float]  # per grid point, in grid order
    probe: SavedProbe
    test_index: np.ndarray  # positions (into X) of the held-out rows
    predicted: np.ndarray  # class codes predicted for them
    codes: np.ndarray  # every row's true class code


def held_out_split(
    n: int, groups: np.ndarray | None, settings: VlmLensSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test positions: VLM-Lens's `train_test_split(range(n), test_size,
    random_state)`, or by whole pictures where rows share one."""
    if groups is None:
        train, test = train_test_split(
            np.arange(n), test_size=settings.test_size, random_state=settings.seed
        )
        return np.asarray(train), np.asarray(test)
    split = GroupShuffleSplit(1, test_size=settings.test_size, random_state=settings.seed)
    train, test = next(split.split(np.zeros(n), groups=groups))
    return train, test


def _cv_splits(
    n: int, groups: np.ndarray | None, settings: VlmLensSettings
) -> list[tuple[np.ndarray, np.ndarray]]:
    """VLM-Lens's `KFold(5, shuffle=True, random_state=42)` over the training split, folds
    grouped by picture where rows share one (fewer folds when there are fewer rows)."""
    if groups is None:
        folds = min(settings.folds, n)
        return list(KFold(folds, shuffle=True, random_state=settings.seed).split(np.zeros(n)))
    folds = min(settings.folds, len(np.unique(groups)))
    kfold = GroupKFold(folds, shuffle=True, random_state=settings.seed)
    return list(kfold.split(np.zeros(n), groups=groups))


def two_sided_z_test(correct: int, other_correct: int, n: int) -> tuple[float, float]:
    """(two-sided, one-sided) p of the two-proportion z-test with the pooled proportion, two
    samples of n: statsmodels' `proportions_ztest([correct, other_correct], [n, n])`, VLM-Lens's
    test, and its one-sided version (correct above other_correct).

    With no spread (both all right or both all wrong) statsmodels returns NaN; the two counts
    are equal then, and this returns (1.0, 0.5): no difference."""
    pooled = (correct + other_correct) / (2 * n)
    spread = math.sqrt(pooled * (1 - pooled) * 2 / n)
    if spread == 0:
        return 1.0, 0.5
    z = (correct - other_correct) / n / spread
    return float(2 * norm.sf(abs(z))), float(norm.sf(z))


def held_out_probe(
    X: np.ndarray,
    y: Sequence[str] | np.ndarray,
    kind: str,
    settings: VlmLensSettings,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> HeldOutResult:
    """VLM-Lens's protocol on one concept (see the module doc). `groups[i]` is row i's picture;
    None, or a different one per row, gives VLM-Lens's plain split and folds."""
    # every row its own picture: group codes None, VLM-Lens's split exactly
    X, classes, codes, group_codes = probe_inputs(X, np.asarray(y).astype(str), groups)
    train, test = held_out_split(len(codes), group_codes, settings)
    train_groups = None if group_codes is None else group_codes[train]
    if (
        len(test) == 0
        or len(train) < 2
        or (train_groups is not None and len(np.unique(train_groups)) < 2)
    ):
        raise TooFewRows(
            f"{len(codes)} rows are too few for a held-out split of {settings.test_size} and "
            f"{settings.folds}-fold CV on the rest; probe more rows or lower test_size"
        )

    grid = settings.grid(kind)
    folds = _cv_splits(len(train), train_groups, settings)
    losses = []
    for hyper in grid:
        total = 0.0
        for fit, check in folds:
            fitted = train_probe(X[train][fit], codes[train][fit], classes, kind, hyper, settings)
            total += float(fitted.losses(X[train][check], codes[train][check]).sum())
        losses.append(total / len(train))
    chosen = grid[int(np.argmin(losses))]  # the first of equal losses, as list.index(min)

    shuffled = np.random.default_rng([settings.seed, _SHUFFLE_STREAM]).permutation(codes)
    control = train_probe(X[train], shuffled[train], classes, kind, chosen, settings)
    shuffled_correct = int((control.predict_codes(X[test]) == shuffled[test]).sum())

    probe = train_probe(X[train], codes[train], classes, kind, chosen, settings)
    predicted = probe.predict_codes(X[test])
    correct = int((predicted == codes[test]).sum())
    two_sided, one_sided = two_sided_z_test(correct, shuffled_correct, len(test))
    return HeldOutResult(
        kind=kind,
        accuracy=correct / len(test),
        shuffled_accuracy=shuffled_correct / len(test),
        z_p_two_sided=two_sided,
        z_p_one_sided=one_sided,
        n=len(codes),
        n_test=len(test),
        classes=len(classes),
        hyperparameters=chosen,
        validation_losses=losses,
        probe=probe,
        test_index=test,
        predicted=predicted,
        codes=codes,
    )


# --------------------------------------------------------------------------------------------
# A model's layers from the warehouse


@dataclass
class ProtocolRows:
    """What one model's scan writes: `probe_results` rows and `probe_predictions` rows."""

    results: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)


def probe_path(probes_root: Path, where: dict[str, str], concept: str, kind: str) -> Path:
    """`<warehouse>/probes/<model>/<dataset>/<layer>/<pooling>/<concept>/<kind>.safetensors`, each
    part percent-encoded (`answer:colour` -> `answer%3Acolour`) so any name is one folder."""
    parts = [where["model"], where["dataset"], where["layer"], where["pooling"], concept]
    folder = probes_root.joinpath(*(_path_part(part) for part in parts))
    return folder / f"{_path_part(kind)}.safetensors"


def model_probes(probes_root: Path, model: str) -> Path:
    """The folder of one model's saved probes."""
    return probes_root / _path_part(model)


def _path_part(name: str) -> str:
    part = quote(name, safe="-_.+=@,")
    return part.replace(".", "%2E") if set(part) == {"."} else part


def concept_rows(
    row_keys: Sequence[str], values: dict[str, str], min_per_class: int
) -> np.ndarray | None:
    """Which rows a concept is probed on: those with a label whose class has at least
    `min_per_class` rows; None when fewer than two classes remain."""
    labels = [values.get(key) for key in row_keys]
    found, counts = np.unique([v for v in labels if v is not None], return_counts=True)
    frequent = set(found[counts >= min_per_class].tolist())
    if len(frequent) < 2:
        return None
    return np.array([value in frequent for value in labels], dtype=bool)


def vlm_lens_probe_layers(
    warehouse: Warehouse,
    model: str,
    settings: ProbeSettings,
    datasets: Sequence[str] | None = None,
    concepts: Sequence[str] | None = None,
) -> ProtocolRows:
    """VLM-Lens's protocol on every probed concept of every pooled (dataset, layer, pooling) of
    a model, each probe kind of `settings.kinds`. The model's saved probes (under the
    warehouse's `probes/`) are replaced; a concept too small to split is left out."""
    found = ProtocolRows()
    probes_root = warehouse.root / PROBES_DIR
    shutil.rmtree(model_probes(probes_root, model), ignore_errors=True)
    with warehouse.connect(read_only=True) as con, probing_context(settings):
        for dataset in labelled_datasets(con, model, datasets):
            labels = load_labels(con, dataset) | answer_labels(con, dataset)
            pictures = row_images(con, dataset)
            chosen = probed_concepts(con, dataset, labels, concepts)
            for layer, pooling in pooled_layers(con, model, dataset):
                keys, X = load_vectors(con, model, dataset, layer, pooling)
                groups = picture_groups([pictures.get(key, (key,)) or (key,) for key in keys])
                where = {"model": model, "dataset": dataset, "layer": layer, "pooling": pooling}
                for concept in chosen:
                    keep = concept_rows(keys, labels[concept], settings.min_per_class)
                    if keep is None:
                        continue
                    kept_keys = [key for key, kept in zip(keys, keep, strict=True) if kept]
                    y = [labels[concept][key] for key in kept_keys]
                    for kind in settings.kinds:
                        _probe_one(found, where, concept, kind, X[keep], y, kept_keys,
                                   groups[keep], settings, probes_root)  # fmt: skip
    return found


def _probe_one(
    found: ProtocolRows,
    where: dict[str, str],
    concept: str,
    kind: str,
    X: np.ndarray,
    y: list[str],
    keys: list[str],
    groups: np.ndarray,
    settings: ProbeSettings,
    probes_root: Path,
) -> None:
    try:
        result = held_out_probe(X, y, kind, settings.vlm_lens, groups)
    except TooFewRows:
        return
    path = probe_path(probes_root, where, concept, kind)
    result.probe.metadata = {
        **where, "concept": concept, "probe": kind, "protocol": PROTOCOL,
        "hyperparameters": json.dumps(result.hyperparameters),
        "accuracy": repr(result.accuracy), "shuffled_accuracy": repr(result.shuffled_accuracy),
        "z_p_two_sided": repr(result.z_p_two_sided), "n_test": str(result.n_test),
        "standardised": str(settings.vlm_lens.standardise).lower(),
    }  # fmt: skip
    result.probe.save(path)
    found.results.append(
        {
            **where, "concept": concept, "probe": kind,
            "accuracy": result.accuracy, "control_accuracy": None, "selectivity": None,
            "p_value": None, "n": result.n, "fold_std": None,
            "shuffled_accuracy": result.shuffled_accuracy, "z_p_value": result.z_p_one_sided,
            "classes": result.classes, "protocol": PROTOCOL,
            "z_p_two_sided": result.z_p_two_sided, "n_test": result.n_test,
            "hyperparameters": json.dumps(result.hyperparameters),
            "probe_file": path.relative_to(probes_root.parent).as_posix(),
        }
    )  # fmt: skip
    classes = result.probe.classes
    for index, code in zip(result.test_index, result.predicted, strict=True):
        label, predicted = classes[result.codes[index]], classes[code]
        found.predictions.append(
            {**where, "concept": concept, "probe": kind, "row_key": keys[index], "label": label,
             "predicted": predicted, "correct": label == predicted}
        )  # fmt: skip
