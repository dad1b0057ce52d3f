"""A fast linear SVM with exactly LinearSVC's default objective (issue 15).

LinearSVC (liblinear) solves, per one-vs-rest problem k with labels y_ik = ±1,

    min_w  0.5·||w||² + C · Σ_i max(0, 1 - y_ik · w·[x_i, 1])²

i.e. L2 penalty, squared hinge, and the intercept as the weight of a constant feature 1
(``intercept_scaling=1``), so the intercept is penalized too. liblinear solves the K problems one
after another and, at the probe's C ≈ 10³, stops at max_iter unconverged. The squared hinge is
differentiable and piecewise quadratic, so here the K problems are solved by an exact
active-set Newton method whose systems are p×p Cholesky solves on Gram matrices kept up to date
by rank updates (or |A|×|A| kernel solves when N < p), warm-started along an ascending C path.
"""
from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits


def _with_one(X: np.ndarray) -> np.ndarray:
    """Append liblinear's constant feature (intercept_scaling=1)."""
    return np.hstack([X, np.ones((X.shape[0], 1), X.dtype)])


def _line_search(W, S, M, D, C, iters=30):
    """Exact minimizer over step α ≥ 0 of the convex, piecewise-quadratic objective along S
    (margins M + αD): 1-D Newton on its derivative, kept inside a shrinking bracket."""
    ws, ss = (W * S).sum(0), (S * S).sum(0)
    lo, hi = np.zeros(S.shape[1]), np.full(S.shape[1], np.inf)
    step = np.ones(S.shape[1])
    for _ in range(iters):
        Ma = M + step * D
        A = Ma < 1
        d1 = ws + step * ss + 2 * C * (A * (Ma - 1) * D).sum(0)
        d2 = ss + 2 * C * (A * D * D).sum(0)
        lo, hi = np.where(d1 < 0, step, lo), np.where(d1 > 0, step, hi)
        new = step - d1 / np.maximum(d2, 1e-300)
        inside = (new > lo) & (new < hi)
        new = np.where(inside, new, np.where(np.isinf(hi), 2 * step, (lo + hi) / 2))
        if np.all(np.abs(new - step) <= 1e-10 * step) or np.all(d1 == 0):
            return new
        step = new
    return step


class _FeatureSystem:
    """Newton systems in feature space (N ≥ p): per class the Gram matrix X_Aᵀ X_A of its active
    samples, kept in step with the active set by rank updates (only samples that entered or left
    it), so along a warm-started C path most Newton steps cost one Cholesky per class."""

    def __init__(self, Xb: np.ndarray, n_cols: int):
        self.Xb = Xb
        self.full = Xb.T @ Xb
        self.held = np.ones((len(Xb), n_cols), bool)   # every margin is 0 < 1 at w = 0
        self.gram = np.repeat(self.full[None], n_cols, axis=0)

    def _sync(self, k: int, active: np.ndarray) -> None:
        Xb, held = self.Xb, self.held[:, k]
        enter, leave = active & ~held, held & ~active
        n_act, n_change = int(active.sum()), int(enter.sum() + leave.sum())
        if n_change <= min(n_act, len(Xb) - n_act):
            if enter.any():
                self.gram[k] += Xb[enter].T @ Xb[enter]
            if leave.any():
                self.gram[k] -= Xb[leave].T @ Xb[leave]
        elif n_act <= len(Xb) - n_act:
            self.gram[k] = Xb[active].T @ Xb[active]
        else:
            self.gram[k] = self.full - Xb[~active].T @ Xb[~active]
        self.held[:, k] = active

    def minimizer(self, A: np.ndarray, Y: np.ndarray, C: float, cols: np.ndarray) -> np.ndarray:
        """Per column, argmin of the objective with the active set frozen (a quadratic):
        (I + 2C·X_AᵀX_A) w = 2C·X_Aᵀy_A."""
        rhs = 2 * C * (self.Xb.T @ (A[:, cols] * Y[:, cols]))
        out = np.empty_like(rhs)
        eye = np.eye(self.Xb.shape[1])
        for j, k in enumerate(cols):
            self._sync(k, A[:, k])
            out[:, j] = cho_solve(cho_factor(eye + 2 * C * self.gram[k], check_finite=False),
                                  rhs[:, j], check_finite=False)
        return out


class _SampleSystem:
    """The same Newton systems in sample space (N < p), by the push-through identity
    (I + 2C·X_AᵀX_A)⁻¹ 2C·X_Aᵀ = X_Aᵀ (I/(2C) + X_A X_Aᵀ)⁻¹: one kernel matrix, sliced."""

    def __init__(self, Xb: np.ndarray, n_cols: int):
        self.Xb, self.kernel = Xb, Xb @ Xb.T

    def minimizer(self, A, Y, C, cols):
        out = np.zeros((self.Xb.shape[1], len(cols)))
        for j, k in enumerate(cols):
            idx = np.flatnonzero(A[:, k])
            if len(idx):
                Kaa = self.kernel[np.ix_(idx, idx)] + np.eye(len(idx)) / (2 * C)
                alpha = cho_solve(cho_factor(Kaa, check_finite=False), Y[idx, k], check_finite=False)
                out[:, j] = self.Xb[idx].T @ alpha
        return out


def newton_system(Xb: np.ndarray, n_cols: int):
    """The cheaper of the two equivalent ways to solve Newton systems for this data."""
    return (_FeatureSystem if len(Xb) >= Xb.shape[1] else _SampleSystem)(Xb, n_cols)


def newton_ovr(Xb: np.ndarray, Y: np.ndarray, C: float, W: np.ndarray, tol: float,
               max_iter: int, system=None) -> tuple[np.ndarray, int, bool]:
    """Minimize the objective for every column of Y at once, starting from W [p,K].

    Finite Newton (Keerthi & DeCoste 2005): the squared hinge is quadratic on each fixed
    active set {i: y_i·f_i < 1}, so each step jumps to that quadratic's exact minimizer and an
    exact line search on the true objective follows; it ends when the active set stops changing.
    Stops when each column's gradient norm is ≤ tol·||w||. The objective is 1-strongly convex
    and ≥ ||w||²/2, so then its relative excess over the optimum is ≤ tol²/(1 - tol²), whatever
    C and the warm start (liblinear's criterion, relative to the gradient at w = 0, is loose by
    a factor ~C on separable data). ``system`` (from ``newton_system``) may be shared along a C
    path. Returns (W, iterations, converged).
    """
    W = W.copy()
    system = system if system is not None else newton_system(Xb, Y.shape[1])
    F = Xb @ W
    it = 0
    while True:
        M = Y * F
        A = M < 1
        G = W + 2 * C * (Xb.T @ (A * (M - 1) * Y))
        todo = np.linalg.norm(G, axis=0) > tol * np.linalg.norm(W, axis=0)
        if not todo.any() or it == max_iter:
            return W, it, not todo.any()
        cols = np.flatnonzero(todo)
        S = system.minimizer(A, Y, C, cols) - W[:, cols]
        XS = Xb @ S
        step = _line_search(W[:, cols], S, M[:, cols], Y[:, cols] * XS, C)
        W[:, cols] += step * S
        F[:, cols] += step * XS
        it += 1


class FastLinearSVC(ClassifierMixin, BaseEstimator):
    """Linear SVM solving ``LinearSVC()``'s objective (squared hinge, L2, one-vs-rest,
    penalized intercept) by active-set (finite) Newton.

    Parameters
    ----------
    C : float — regularization, as in LinearSVC.
    tol : float — stop when ||gradient|| ≤ tol · ||w|| for every class: the objective is
        then within tol² (relative) of its minimum.
    max_iter : int — Newton iterations (each is one Cholesky solve per unconverged class).
    warm_start : bool — start from the previous ``coef_``/``intercept_`` (same classes and
        features), as when fitting an ascending C path.
    blas_threads : int or None — BLAS threads while fitting (None: the library's default).
        1 by default: on a shared machine OpenBLAS threads spin-wait when cores are
        oversubscribed (a 1,200×256 fit took 28 s with 2 threads, 0.6 s with 1, at load 8).

    Attributes: ``coef_`` [K, d] (K = 1 for two classes, positive = ``classes_[1]``),
    ``intercept_`` [K], ``classes_``, ``n_iter_``, ``converged_``.
    """

    _parameter_constraints = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "blas_threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, C=1.0, tol=1e-3, max_iter=200, warm_start=False, blas_threads=1):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.blas_threads = blas_threads

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        classes, Y = _targets(y)
        Xb, C = _with_one(X), float(self.C)
        if (self.warm_start and hasattr(self, "coef_") and self.coef_.shape == (Y.shape[1], X.shape[1])
                and np.array_equal(self.classes_, classes)):
            W0, Cs = np.vstack([self.coef_.T, self.intercept_[None]]), [C]
        else:
            W0, Cs = np.zeros((Xb.shape[1], Y.shape[1])), _continuation(C, *Xb.shape)
        with threadpool_limits(self.blas_threads, user_api="blas"):
            system = newton_system(Xb, Y.shape[1])
            n_iter = 0
            for c in Cs:
                W, steps, converged = newton_ovr(Xb, Y, c, W0, self.tol, self.max_iter, system)
                W0, n_iter = W, n_iter + steps
        if not converged:
            warnings.warn(f"FastLinearSVC did not converge in max_iter={self.max_iter} Newton "
                          "iterations; increase max_iter.", ConvergenceWarning)
        return self._set_solution(classes, W, n_iter, converged)

    def _set_solution(self, classes, W, n_iter, converged):
        self.classes_, self.coef_, self.intercept_ = classes, W[:-1].T.copy(), W[-1].copy()
        self.n_iter_, self.converged_ = n_iter, converged
        return self

    def decision_function(self, X):
        """Scores [n] for two classes (> 0 means ``classes_[1]``), else [n, K]."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        f = X @ self.coef_.T + self.intercept_
        return f.ravel() if f.shape[1] == 1 else f

    def predict(self, X):
        f = self.decision_function(X)
        return self.classes_[(f > 0).astype(int) if f.ndim == 1 else f.argmax(1)]


def _targets(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes and ±1 targets [N, K]: one column per class, or one (positive = classes[1])
    for two, as LinearSVC."""
    check_classification_targets(y)
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"FastLinearSVC needs samples of at least 2 classes; got one "
                         f"class: {classes[0]!r}.")
    if len(classes) == 2:
        return classes, np.where(y_idx == 1, 1.0, -1.0)[:, None]
    return classes, np.where(y_idx[:, None] == np.arange(len(classes)), 1.0, -1.0)


def _continuation(C: float, n: int, p: int) -> list[float]:
    """C preceded by C/10, C/100, ... down to p/n (the probe's t = 1). From w = 0 the finite
    Newton method needs ~15-30 steps at C ≈ p/n but > 200 at C ≈ 10⁴·p/n; each tenfold step
    of a warm-started path needs only a few."""
    Cs = [C]
    while Cs[0] / 10 >= p / n:
        Cs.insert(0, Cs[0] / 10)
    return Cs


def fit_path(X, y, Cs, tol: float = 1e-3, max_iter: int = 200,
             blas_threads: int | None = 1) -> list[FastLinearSVC]:
    """One fitted FastLinearSVC per C (in the order given), each warm-started from the
    solution at the next smaller C and sharing one set of Newton systems (the Gram matrices
    follow the active sets, which change little from one C to the next)."""
    template = FastLinearSVC(tol=tol, max_iter=max_iter, blas_threads=blas_threads)
    template._validate_params()
    X, y = validate_data(template, X, y, dtype=np.float64)
    classes, Y = _targets(y)
    Xb = _with_one(X)
    fitted = {}
    with threadpool_limits(blas_threads, user_api="blas"):
        system = newton_system(Xb, Y.shape[1])
        W = np.zeros((Xb.shape[1], Y.shape[1]))
        ascending = sorted(set(float(c) for c in Cs))
        for C in _continuation(ascending[0], *Xb.shape)[:-1]:  # start below a large first C
            W = newton_ovr(Xb, Y, C, W, tol, max_iter, system)[0]
        for C in ascending:
            W, n_iter, converged = newton_ovr(Xb, Y, C, W, tol, max_iter, system)
            fitted[C] = (W, n_iter, converged)
    for C, (W, n_iter, converged) in fitted.items():
        model = FastLinearSVC(C=C, tol=tol, max_iter=max_iter, blas_threads=blas_threads)
        model.n_features_in_ = template.n_features_in_
        fitted[C] = model._set_solution(classes, W, n_iter, converged)
    return [fitted[float(c)] for c in Cs]
