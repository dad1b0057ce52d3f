"""A fast linear SVM with exactly LinearSVC's default objective (issue 15).

LinearSVC (liblinear) solves, per one-vs-rest problem k with labels y_ik = ±1,

    min_w  0.5·||w||² + C · Σ_i max(0, 1 - y_ik · w·[x_i, 1])²

i.e. L2 penalty, squared hinge, and the intercept as the weight of a constant feature 1
(``intercept_scaling=1``), so the intercept is penalized too. liblinear solves the K problems one
after another and, at the probe's C ≈ 10³, stops at max_iter unconverged. The squared hinge is
differentiable, so here all K problems are solved at once by a primal Newton method with
preconditioned conjugate gradients (as liblinear's own primal solver, but batched as matrix
products over the K columns), warm-started along an ascending C path.
"""
from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

_CG_ETA = 0.1    # inexact Newton: CG stops when ||residual|| <= eta·||gradient||


def _with_one(X: np.ndarray) -> np.ndarray:
    """Append liblinear's constant feature (intercept_scaling=1)."""
    return np.hstack([X, np.ones((X.shape[0], 1), X.dtype)])


def _objective(W, F, Y, C):
    """Per-column primal objective from weights W [p,K] and scores F = Xb @ W [N,K]."""
    slack = np.maximum(0.0, 1.0 - Y * F)
    return 0.5 * (W * W).sum(0) + C * (slack * slack).sum(0)


def _pcg(hess_vec, G, precond, max_cg):
    """Solve H S = -G column by column (preconditioned CG, all columns batched)."""
    S = np.zeros_like(G)
    R = -G
    Z = precond(R)
    P = Z.copy()
    rz = (R * Z).sum(0)
    stop = _CG_ETA * np.linalg.norm(G, axis=0)
    for _ in range(max_cg):
        live = np.linalg.norm(R, axis=0) > stop
        if not live.any():
            break
        HP = hess_vec(P)
        alpha = np.where(live, rz / np.maximum((P * HP).sum(0), 1e-300), 0.0)
        S += alpha * P
        R -= alpha * HP
        Z = precond(R)
        rz_new = (R * Z).sum(0)
        P = Z + np.where(live, rz_new / np.maximum(rz, 1e-300), 0.0) * P
        rz = rz_new
    return S


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
        new = step - d1 / d2
        inside = (new > lo) & (new < hi)
        new = np.where(inside, new, np.where(np.isinf(hi), 2 * step, (lo + hi) / 2))
        if np.all(np.abs(new - step) <= 1e-10 * step) or np.all(d1 == 0):
            return new
        step = new
    return step


def newton_ovr(Xb: np.ndarray, Y: np.ndarray, C: float, W: np.ndarray, tol: float,
               max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Minimize the objective for every column of Y at once, starting from W [p,K].

    Stops when each column's gradient norm is ≤ tol·||w||. The objective is 1-strongly convex
    and ≥ ||w||²/2, so then its relative excess over the optimum is ≤ tol²/(1 - tol²), whatever
    C and the warm start (liblinear's criterion, relative to the gradient at w = 0, is loose by
    a factor ~C on separable data). Returns (W, iterations, converged).
    """
    W = W.copy()
    F = Xb @ W
    # Preconditioner: H ≈ I + 2C·n_active·Σ with Σ = XbᵀXb/N, i.e. the active set taken as a
    # random subset; one eigendecomposition serves every class, iteration and C.
    lam, V = np.linalg.eigh(Xb.T @ Xb / len(Xb))
    it = 0
    while True:
        M = Y * F
        A = (M < 1).astype(Xb.dtype)
        G = W + 2 * C * (Xb.T @ (A * (M - 1) * Y))
        todo = np.linalg.norm(G, axis=0) > tol * np.linalg.norm(W, axis=0)
        if not todo.any() or it == max_iter:
            return W, it, not todo.any()
        cols = np.flatnonzero(todo)
        Ac = A[:, cols]
        inv = 1 / (1 + 2 * C * np.outer(lam, Ac.sum(0)))
        S = _pcg(lambda P: P + 2 * C * (Xb.T @ (Ac * (Xb @ P))), G[:, cols],
                 lambda R: V @ (inv * (V.T @ R)), max_cg=Xb.shape[1])
        XS = Xb @ S
        step = _line_search(W[:, cols], S, Y[:, cols] * F[:, cols], Y[:, cols] * XS, C)
        W[:, cols] += step * S
        F[:, cols] += step * XS
        it += 1


class FastLinearSVC(ClassifierMixin, BaseEstimator):
    """Linear SVM solving ``LinearSVC()``'s objective (squared hinge, L2, one-vs-rest,
    penalized intercept) by batched primal Newton-CG.

    Parameters
    ----------
    C : float — regularization, as in LinearSVC.
    tol : float — stop when ||gradient|| ≤ tol · ||w|| for every class: the objective is
        then within tol² (relative) of its minimum.
    max_iter : int — Newton iterations (each is a few dozen matrix products).
    warm_start : bool — start from the previous ``coef_``/``intercept_`` (same classes and
        features), as when fitting an ascending C path.

    Attributes: ``coef_`` [K, d] (K = 1 for two classes, positive = ``classes_[1]``),
    ``intercept_`` [K], ``classes_``, ``n_iter_``, ``converged_``.
    """

    _parameter_constraints = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
    }

    def __init__(self, C=1.0, tol=1e-3, max_iter=200, warm_start=False):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"FastLinearSVC needs samples of at least 2 classes; got one "
                             f"class: {classes[0]!r}.")
        Y = _ovr_targets(y_idx, len(classes))
        W0 = np.zeros((X.shape[1] + 1, Y.shape[1]))
        if (self.warm_start and hasattr(self, "coef_") and self.coef_.shape == (Y.shape[1], X.shape[1])
                and np.array_equal(self.classes_, classes)):
            W0 = np.vstack([self.coef_.T, self.intercept_[None]])
        W, self.n_iter_, self.converged_ = newton_ovr(_with_one(X), Y, float(self.C), W0,
                                                      self.tol, self.max_iter)
        if not self.converged_:
            warnings.warn(f"FastLinearSVC did not converge in max_iter={self.max_iter} Newton "
                          "iterations; increase max_iter.", ConvergenceWarning)
        self.classes_, self.coef_, self.intercept_ = classes, W[:-1].T.copy(), W[-1].copy()
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


def _ovr_targets(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """±1 targets [N, K]: one column per class, or one column (positive = class 1) for two."""
    if n_classes == 2:
        return np.where(y_idx == 1, 1.0, -1.0)[:, None]
    return np.where(y_idx[:, None] == np.arange(n_classes), 1.0, -1.0)


def fit_path(X, y, Cs, tol: float = 1e-3, max_iter: int = 200) -> list[FastLinearSVC]:
    """One fitted FastLinearSVC per C (in the order given), each warm-started from the
    solution at the next smaller C: along the probe's t grid most Newton steps are saved."""
    model = FastLinearSVC(tol=tol, max_iter=max_iter, warm_start=True)
    fitted = {}
    for C in sorted(set(float(c) for c in Cs)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in converged_
            model.set_params(C=C).fit(X, y)
        fitted[C] = _copy_fitted(model)
    return [fitted[float(c)] for c in Cs]


def _copy_fitted(model: FastLinearSVC) -> FastLinearSVC:
    out = FastLinearSVC(**model.get_params())
    out.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v)
                         for k, v in model.__dict__.items() if k.endswith("_")})
    return out
