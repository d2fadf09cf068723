"""Many small L2-regularised logistic regressions fitted at once: the linear probe of
`probe_maths`, without paying scikit-learn's per-fit overhead thousands of times.

A probe task trains the same linear probe on every fold of three labellings (the task, its
control task, the shuffled control): 15 fits of a few dozen rows each. scikit-learn spends most
of such a fit checking its inputs and stepping SciPy's L-BFGS one Python call at a time, so the
demo's ~750 probe tasks cost minutes of overhead for milliseconds of arithmetic. Here every fit of
a batch steps together: one set of array operations per L-BFGS iteration for all of them.

The objective is scikit-learn's `LogisticRegression(C, solver="lbfgs")` on standardised
features, exactly: mean cross-entropy over the training rows plus `||W||^2 / (2 C n_train)`,
the intercept unpenalised, softmax over the classes present in the training rows. A two-class
fit is the binomial model (one weight vector); its optimum is the symmetric two-class softmax's
with the penalty doubled, which is how it is solved here. Each fit runs its own L-BFGS (its own
history, step and stopping test: max |gradient| <= tol, or `max_iter` iterations), so a fit
converges as it would alone; the optimum is unique, so predictions agree with scikit-learn's
except for a row lying on a decision boundary within the solvers' tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HISTORY = 10  # L-BFGS memory, SciPy's default
ARMIJO = 1e-4  # sufficient decrease
MAX_BACKTRACKS = 30
FTOL = 64 * np.finfo(float).eps  # scikit-learn's relative-decrease stop


def _einsum_rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("pd,pd->p", a, b)


# Row-wise dot products of two (p, d) arrays: np.vecdot where numpy has it (2.0 on), twice
# einsum's speed on arrays this small.
_rowdot = getattr(np, "vecdot", _einsum_rowdot)


@dataclass
class LogisticBatch:
    """P fits padded to one shape: design matrices with a trailing column of ones (P, n, D),
    row weights (P, n: 1 / n_train on training rows, 0 elsewhere), the one-hot targets times
    the row weights (P, n, K),
    the classes present in each fit's training rows (P, K) and each fit's L2 strength (P,)."""

    design: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    present: np.ndarray
    strength: np.ndarray
    mask: np.ndarray = field(init=False)  # 0 for present classes, -inf for the others

    def objective(
        self, W: np.ndarray, index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(loss (p,), gradient (p, D, K)) at weights W (p, D, K) of the fits `index` (all
        when None)."""
        pick = slice(None) if index is None else index
        X, T, w = self.design[pick], self.targets[pick], self.weights[pick]
        strength = self.strength[pick]
        Z = np.matmul(X, W)
        target_logit = _rowdot(T.reshape(len(T), -1), Z.reshape(len(Z), -1))
        Z += self.mask[pick][:, None, :]
        top = Z.max(axis=2, keepdims=True)
        Z -= top
        np.exp(Z, out=Z)
        total = Z.sum(axis=2, keepdims=True)
        log_norm = np.log(total[..., 0]) + top[..., 0]
        Z /= total
        Z *= w[:, :, None]
        Z -= T
        gradient = np.matmul(X.transpose(0, 2, 1), Z)
        penalised = W[:, :-1, :]  # the last row is the intercept's
        gradient[:, :-1, :] += strength[:, None, None] * penalised
        loss = _rowdot(w, log_norm) - target_logit
        flat = penalised.reshape(len(W), -1)
        loss += 0.5 * strength * _rowdot(flat, flat)
        return loss, gradient

    def __post_init__(self) -> None:
        self.mask = np.where(self.present, 0.0, -np.inf)  # added to the logits

    def subset(self, keep: np.ndarray) -> LogisticBatch:
        return LogisticBatch(
            self.design[keep], self.targets[keep], self.weights[keep], self.present[keep],
            self.strength[keep],
        )  # fmt: skip


def standardised_design(X: np.ndarray, train: np.ndarray, rows: int) -> np.ndarray:
    """X scaled by its training rows' mean and standard deviation (a constant feature keeps
    scale 1, as StandardScaler does), a column of ones appended, padded to `rows` rows."""
    mean = X[train].mean(axis=0)
    spread = X[train].std(axis=0)
    spread[spread == 0] = 1.0
    design = np.zeros((rows, X.shape[1] + 1))
    design[: len(X), :-1] = (X - mean) / spread
    design[: len(X), -1] = 1.0
    return design


def fold_batch(
    X: np.ndarray,
    labellings: list[np.ndarray],
    splits: list[tuple[np.ndarray, np.ndarray]],
    C: float,
) -> LogisticBatch:
    """The fits of every (labelling, fold): labelling l on fold f is fit l * F + f. Labels are
    class codes 0..K-1 (one K for every labelling)."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    classes = int(max(int(codes.max()) for codes in labellings)) + 1
    designs = np.stack([standardised_design(X, train, n) for train, _ in splits])
    fits = [(codes, f) for codes in labellings for f in range(len(splits))]
    design = designs[[f for _, f in fits]]
    targets = np.zeros((len(fits), n, classes))
    weights = np.zeros((len(fits), n))
    present = np.zeros((len(fits), classes), dtype=bool)
    strength = np.zeros(len(fits))
    for p, (codes, f) in enumerate(fits):
        train = splits[f][0]
        weights[p, train] = 1.0 / len(train)
        targets[p, train, codes[train]] = 1.0 / len(train)
        present[p, np.unique(codes[train])] = True
        # The binomial model's penalty is the two-class softmax's at twice the strength.
        strength[p] = (2.0 if present[p].sum() == 2 else 1.0) / (C * len(train))
    return LogisticBatch(design, targets, weights, present, strength)


def fit(batch: LogisticBatch, tol: float = 1e-4, max_iter: int = 200) -> np.ndarray:
    """Each fit's weights (P, D, K), by L-BFGS run per fit and vectorised over the fits still
    running: SciPy's stopping rules as scikit-learn sets them (max |gradient| <= tol, a
    relative decrease below 64 eps, or max_iter iterations), backtracking Armijo steps. The
    fits still running have all taken the same number of steps, so their histories share one
    ring of slots; a fit that stops leaves the working arrays."""
    P, _, D = batch.design.shape
    K = batch.targets.shape[2]
    out = np.zeros((P, D, K))
    ids = np.arange(P)  # working fit -> batch fit
    work = batch
    W = np.zeros((P, D, K))
    loss, grad = work.objective(W)
    S = np.zeros((HISTORY, P, D * K))
    Y = np.zeros((HISTORY, P, D * K))
    rho = np.zeros((HISTORY, P))  # 0 marks an empty slot
    gamma = np.ones(P)
    done = np.abs(grad).reshape(P, -1).max(axis=1) <= tol
    iteration = 0
    while True:
        if done.any():
            out[ids[done]] = W[done]
            keep = ~done
            if not keep.any():
                return out
            ids, W, loss, grad, gamma = ids[keep], W[keep], loss[keep], grad[keep], gamma[keep]
            S, Y, rho, work = S[:, keep], Y[:, keep], rho[:, keep], work.subset(keep)
        g = grad.reshape(len(ids), -1)
        direction = -_two_loop(g, S, Y, rho, gamma, iteration)
        slope = _rowdot(g, direction)
        uphill = slope >= 0  # a stale history: restart from steepest descent
        if uphill.any():
            direction[uphill] = -g[uphill]
            slope[uphill] = -_rowdot(g[uphill], g[uphill])
            rho[:, uphill] = 0.0
            gamma[uphill] = 1.0
        if iteration == 0:
            step = 1.0 / np.maximum(np.linalg.norm(direction, axis=1), 1e-300)
        else:
            step = np.ones(len(ids))
        new_W, new_loss, new_grad = _backtrack(work, W, loss, slope, direction, step)
        s = (new_W - W).reshape(len(ids), -1)
        y = (new_grad - grad).reshape(len(ids), -1)
        sy = _rowdot(s, y)
        yy = _rowdot(y, y)
        curved = sy > np.finfo(float).eps * yy  # SciPy skips updates without curvature
        slot = iteration % HISTORY
        S[slot], Y[slot] = s, y
        rho[slot] = np.where(curved, 1.0 / np.where(curved, sy, 1.0), 0.0)
        gamma = np.where(curved, sy / np.where(curved, yy, 1.0), gamma)
        decrease = loss - new_loss
        scale = np.maximum(np.maximum(np.abs(loss), np.abs(new_loss)), 1.0)
        W, loss, grad = new_W, new_loss, new_grad
        iteration += 1
        done = (
            (np.abs(grad).reshape(len(ids), -1).max(axis=1) <= tol)
            | (decrease <= FTOL * scale)
            | (iteration >= max_iter)
        )


def _two_loop(
    g: np.ndarray,
    S: np.ndarray,
    Y: np.ndarray,
    rho: np.ndarray,
    gamma: np.ndarray,
    iteration: int,
) -> np.ndarray:
    """H g for each fit's L-BFGS inverse-Hessian estimate; slot `iteration - 1` (mod the
    ring) holds the newest pair, and empty or skipped slots have rho 0."""
    order = [(iteration - 1 - back) % len(S) for back in range(min(iteration, len(S)))]
    q = g.copy()
    alpha = {}
    for i in order:
        alpha[i] = rho[i] * _rowdot(S[i], q)
        q -= alpha[i][:, None] * Y[i]
    r = gamma[:, None] * q
    for i in reversed(order):
        beta = rho[i] * _rowdot(Y[i], r)
        r += (alpha[i] - beta)[:, None] * S[i]
    return r


def _backtrack(
    batch: LogisticBatch,
    W: np.ndarray,
    loss: np.ndarray,
    slope: np.ndarray,
    direction: np.ndarray,
    step: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first of step, step/2, step/4, ... meeting the Armijo condition, per fit; a fit
    finding none keeps its weights (and then stops: it no longer decreases)."""
    direction = direction.reshape(W.shape)
    new_W = W + step[:, None, None] * direction
    new_loss, new_grad = batch.objective(new_W)
    pending = np.flatnonzero(new_loss > loss + ARMIJO * step * slope)
    for _ in range(MAX_BACKTRACKS):
        if not len(pending):
            return new_W, new_loss, new_grad
        step[pending] /= 2
        trial = W[pending] + step[pending, None, None] * direction[pending]
        trial_loss, trial_grad = batch.objective(trial, pending)
        new_W[pending], new_loss[pending], new_grad[pending] = trial, trial_loss, trial_grad
        pending = pending[trial_loss > loss[pending] + ARMIJO * step[pending] * slope[pending]]
    new_W[pending], new_loss[pending] = W[pending], loss[pending]
    new_grad[pending] = batch.objective(W[pending], pending)[1]
    return new_W, new_loss, new_grad


def predict(batch: LogisticBatch, W: np.ndarray, fits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Class codes predicted for `rows` of the design by fits `fits` (one row set for all)."""
    Z = np.matmul(batch.design[fits][:, rows], W[fits])
    Z += batch.mask[fits][:, None, :]
    return Z.argmax(axis=2)
