"""A fast linear SVM with exactly LinearSVC's default objective.

LinearSVC (liblinear) solves, per one-vs-rest problem k with labels y_ik = ±1,

    min_w  0.5·||w||² + C · Σ_i max(0, 1 - y_ik · w·[x_i, 1])²

i.e. L2 penalty, squared hinge, and the intercept as the weight of a constant feature 1
(``intercept_scaling=1``), so the intercept is penalized too. liblinear solves the K problems one
after another and, at the probe's C ≈ 10³, stops at max_iter unconverged. The squared hinge is
differentiable and piecewise quadratic, so here the K problems are solved by an exact
active-set Newton method whose systems are p×p Cholesky solves on Gram matrices kept up to date
by rank updates (or |A|×|A| kernel solves when N < p), warm-started along an ascending C path.

The same Newton loop and line search run on NumPy (the reference path) or on torch in float64
(``device="cpu"``/``"cuda"``), where each step updates every class's Gram matrix in one batched
product and factors them in one batched Cholesky: the probe's path on a GPU when one is present.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from ..devices import resolve_device, torch_threads
from ..validation import VlmprobeError


def _with_one(X: np.ndarray) -> np.ndarray:
    """Append liblinear's constant feature (intercept_scaling=1)."""
    return np.hstack([X, np.ones((X.shape[0], 1), X.dtype)])


class _NumpyOps:
    """The few array functions the shared Newton loop and line search need, for NumPy arrays."""

    where, isinf, abs, all = map(staticmethod, (np.where, np.isinf, np.abs, np.all))
    maximum, flatnonzero = map(staticmethod, (np.maximum, np.flatnonzero))

    @staticmethod
    def full(n, value):
        return np.full(n, value)

    @staticmethod
    def col_norm(G):
        return np.linalg.norm(G, axis=0)

    @staticmethod
    def copy(a):
        return a.copy()


class _TorchOps:
    """The same functions for float64 torch tensors on ``device`` (and torch itself, imported
    only when a torch device is asked for)."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.where, self.isinf, self.abs, self.all = torch.where, torch.isinf, torch.abs, torch.all

    def full(self, n, value):
        return self.torch.full((n,), value, dtype=self.torch.float64, device=self.device)

    def col_norm(self, G):
        return self.torch.linalg.vector_norm(G, dim=0)

    @staticmethod
    def maximum(x, floor):
        return x.clamp_min(floor)

    @staticmethod
    def flatnonzero(mask):
        return mask.nonzero().flatten()

    @staticmethod
    def copy(a):
        return a.clone()


def _line_search(W, S, M, D, C, xp, iters=30):
    """Exact minimizer over step α ≥ 0 of the convex, piecewise-quadratic objective along S
    (margins M + αD): 1-D Newton on its derivative, kept inside a shrinking bracket. ``xp``:
    the arrays' ops (``_NumpyOps`` or ``_TorchOps``)."""
    ws, ss = (W * S).sum(0), (S * S).sum(0)
    lo, hi = xp.full(S.shape[1], 0.0), xp.full(S.shape[1], np.inf)
    step = xp.full(S.shape[1], 1.0)
    for _ in range(iters):
        Ma = M + step * D
        A = Ma < 1
        d1 = ws + step * ss + 2 * C * (A * (Ma - 1) * D).sum(0)
        d2 = ss + 2 * C * (A * D * D).sum(0)
        lo, hi = xp.where(d1 < 0, step, lo), xp.where(d1 > 0, step, hi)
        new = step - d1 / xp.maximum(d2, 1e-300)
        inside = (new > lo) & (new < hi)
        new = xp.where(inside, new, xp.where(xp.isinf(hi), 2 * step, (lo + hi) / 2))
        if xp.all(xp.abs(new - step) <= 1e-10 * step) or xp.all(d1 == 0):
            return new
        step = new
    return step


class _FeatureSystem:
    """Newton systems in feature space (N ≥ p): per class the Gram matrix X_Aᵀ X_A of its active
    samples, kept in step with the active set by rank updates (only samples that entered or left
    it), so along a warm-started C path most Newton steps cost one Cholesky per class."""

    ops = _NumpyOps

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

    ops = _NumpyOps

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


class _TorchFeatureSystem:
    """Feature-space systems on torch, every class at once: the Gram matrices X_AᵀX_A [K, p, p]
    follow the active sets as in ``_FeatureSystem`` (per class from the fewest rows: those that
    entered or left, the active ones, or the inactive ones), batched by padding every class's
    rows to the longest list, and one batched Cholesky factors them."""

    def __init__(self, Xb, n_cols: int):
        self.Xb, self.ops = Xb, _TorchOps(Xb.device)
        torch = self.ops.torch
        self.full = Xb.T @ Xb
        self.held = torch.ones((n_cols, len(Xb)), dtype=Xb.dtype, device=Xb.device)  # 0/1 [K, N]
        self.gram = self.full.expand(n_cols, -1, -1).clone()  # every sample active at w = 0
        self.eye = torch.eye(Xb.shape[1], dtype=Xb.dtype, device=Xb.device)

    def _sync(self, act, cols):
        """The Gram matrices of classes ``cols`` [k, p, p] brought to their active sets ``act``
        [k, N]: from the held ones (mode 0), from zero (1) or from XᵀX (2)."""
        torch, Xb = self.ops.torch, self.Xb
        delta = act - self.held[cols]                                       # +1 in, -1 out
        n_act = act.sum(1)
        mode = torch.stack([(delta != 0).sum(1), n_act, len(Xb) - n_act]).argmin(0)
        sign = torch.where((mode == 0)[:, None], delta,                     # ±1 on used rows
                           torch.where((mode == 1)[:, None], act, act - 1))
        n_rows = int((sign != 0).sum(1).max())
        rows = sign.abs().argsort(1, descending=True)[:, :n_rows]           # [k, m], used first
        Xr = Xb[rows]                                                       # [k, m, p]
        gram = self.gram[cols]
        gram[mode == 1], gram[mode == 2] = 0.0, self.full
        gram.baddbmm_(Xr.transpose(1, 2) * sign.gather(1, rows)[:, None, :], Xr)
        self.gram[cols], self.held[cols] = gram, act
        return gram

    def minimizer(self, A, Y, C, cols):
        """As ``_FeatureSystem.minimizer``."""
        torch, Xb = self.ops.torch, self.Xb
        act = A[:, cols].T.to(Xb.dtype)                                    # [k, N]
        rhs = 2 * C * ((act * Y[:, cols].T) @ Xb)                          # [k, p]
        factor = torch.linalg.cholesky(torch.add(self.eye, self._sync(act, cols), alpha=2 * C))
        return torch.cholesky_solve(rhs[:, :, None], factor)[:, :, 0].T


class _TorchSampleSystem:
    """Sample-space systems on torch, every class at once: each class's kernel system
    (I/(2C) + X_A X_Aᵀ) α = y_A is padded to N×N with identity rows and zero right-hand sides
    for its inactive samples (so α is 0 there), and one batched Cholesky solves them all."""

    def __init__(self, Xb, n_cols: int):
        self.Xb, self.ops, self.kernel = Xb, _TorchOps(Xb.device), Xb @ Xb.T

    def minimizer(self, A, Y, C, cols):
        """As ``_SampleSystem.minimizer``."""
        torch = self.ops.torch
        act = A[:, cols].T.to(self.Xb.dtype)                               # [k, N]
        padded = (self.kernel * (act[:, :, None] * act[:, None, :])
                  + torch.diag_embed(act / (2 * C) + (1 - act)))
        alpha = torch.cholesky_solve((act * Y[:, cols].T)[:, :, None], torch.linalg.cholesky(padded))
        return self.Xb.T @ alpha[:, :, 0].T


def newton_system(Xb, n_cols: int):
    """The cheaper of the two equivalent ways to solve Newton systems for this data, on Xb's
    backend (a NumPy array, or a float64 torch tensor)."""
    feature_space = len(Xb) >= Xb.shape[1]
    if isinstance(Xb, np.ndarray):
        return (_FeatureSystem if feature_space else _SampleSystem)(Xb, n_cols)
    return (_TorchFeatureSystem if feature_space else _TorchSampleSystem)(Xb, n_cols)


def _objective(W, M, C: float, xp):
    """Per column: 0.5·‖w‖² + C·Σ max(0, 1 − m)² at margins M."""
    return 0.5 * (W * W).sum(0) + C * (xp.maximum(1 - M, 0.0) ** 2).sum(0)


#: a Newton step plus exact line search that lowers a column's objective by no more than this
#: many ulps of it has reached the floating-point floor: no step can do better
FLOOR_ULPS = 16


def newton_ovr(Xb, Y, C: float, W, tol: float, max_iter: int,
               system=None) -> tuple[object, int, bool, bool]:
    """Minimize the objective for every column of Y at once, starting from W [p,K].

    Finite Newton (Keerthi & DeCoste 2005): the squared hinge is quadratic on each fixed
    active set {i: y_i·f_i < 1}, so each step jumps to that quadratic's exact minimizer and an
    exact line search on the true objective follows; it ends when the active set stops changing.
    Stops when each column's gradient norm is ≤ tol·||w||. The objective is 1-strongly convex
    and ≥ ||w||²/2, so ||w − w*|| ≤ ||g||, ||w*|| ≥ (1 − tol)·||w|| and its relative excess over
    the optimum is ≤ ||g||²/2 / ((1 − tol)²·||w||²/2) = tol²/(1 − tol)², whatever C and the warm
    start (liblinear's criterion, relative to the gradient at w = 0, is loose by a factor ~C on
    separable data). A column whose objective a whole step lowers by no more than FLOOR_ULPS
    ulps is at the floating-point floor (at large C the gradient's rounding error, ~eps·C·‖X‖,
    can exceed tol·‖w‖: duplicate rows with conflicting labels, N < d, t ≥ 1000): exact
    arithmetic would stop there too, so it counts as converged, flagged "at floor".
    ``system`` (from ``newton_system``) may be shared along a C path. Xb, Y and W are all
    NumPy arrays or all torch tensors on one device.
    Returns (W, iterations, converged, any column at the floor).
    """
    system = system if system is not None else newton_system(Xb, Y.shape[1])
    xp = system.ops
    W = xp.copy(W)
    F = Xb @ W
    floor = xp.col_norm(W) < 0  # no column at the floor yet
    it = 0
    while True:
        M = Y * F
        A = M < 1
        G = W + 2 * C * (Xb.T @ (A * (M - 1) * Y))
        todo = (xp.col_norm(G) > tol * xp.col_norm(W)) & ~floor
        if not todo.any() or it == max_iter:
            return W, it, not todo.any(), bool(floor.any())
        cols = xp.flatnonzero(todo)
        before = _objective(W[:, cols], M[:, cols], C, xp)
        S = system.minimizer(A, Y, C, cols) - W[:, cols]
        XS = Xb @ S
        step = _line_search(W[:, cols], S, M[:, cols], Y[:, cols] * XS, C, xp)
        W[:, cols] += step * S
        F[:, cols] += step * XS
        after = _objective(W[:, cols], Y[:, cols] * F[:, cols], C, xp)
        floor[cols] = before - after <= FLOOR_ULPS * np.finfo(np.float64).eps * before
        it += 1


class _DeviceOptions(StrOptions):
    """``device``'s valid values: the named options, or "cuda:<index>"."""

    def is_satisfied_by(self, val):
        return super().is_satisfied_by(val) or (isinstance(val, str)
                                                and re.fullmatch(r"cuda:\d+", val) is not None)

    def __str__(self):
        return f"{super().__str__()} or 'cuda:<index>'"


DEVICES = _DeviceOptions({"numpy", "auto", "cpu", "cuda"})


def _backend(device: str | None) -> str:
    """:func:`vlmprobe.devices.resolve_device` with the NumPy path, refused as an estimator
    refuses a parameter: with a ValueError."""
    try:
        return resolve_device(device, numpy=True)
    except VlmprobeError as err:
        raise ValueError(str(err)) from None


@contextmanager
def _thread_limit(n: int | None, device: str):
    """At most n BLAS threads (NumPy path) or torch CPU threads while fitting; None: defaults."""
    with threadpool_limits(n, user_api="blas"):
        if n is None or device != "cpu":
            yield
            return
        with torch_threads(n):
            yield


def _solve(Xb: np.ndarray, Y: np.ndarray, W: np.ndarray, Cs: list[float], tol: float,
           max_iter: int, device: str, threads: int | None
           ) -> list[tuple[np.ndarray, int, bool, bool]]:
    """(W, iterations, converged, at floor) at each C of Cs in turn, each run warm-started from the one
    before and all sharing one set of Newton systems, on ``device`` (from ``_backend``);
    every W comes back as a NumPy array."""
    with _thread_limit(threads, device):
        if device != "numpy":
            import torch

            Xb, Y, W = (torch.as_tensor(a, device=device) for a in (Xb, Y, W))
        system = newton_system(Xb, Y.shape[1])
        path = []
        for C in Cs:
            W, n_iter, converged, floor = newton_ovr(Xb, Y, C, W, tol, max_iter, system)
            path.append((W if device == "numpy" else W.cpu().numpy(), n_iter, converged, floor))
    return path


class FastLinearSVC(ClassifierMixin, BaseEstimator):
    """Linear SVM solving ``LinearSVC()``'s objective (squared hinge, L2, one-vs-rest,
    penalized intercept) by active-set (finite) Newton.

    Parameters
    ----------
    C : float — regularization, as in LinearSVC.
    tol : float — stop when ||gradient|| ≤ tol · ||w|| for every class: the objective is
        then within tol²/(1 − tol)² (relative) of its minimum.
    max_iter : int — Newton iterations (each is one Cholesky solve per unconverged class).
    warm_start : bool — start from the previous ``coef_``/``intercept_`` (same classes and
        features), as when fitting an ascending C path.
    blas_threads : int or None — BLAS threads (torch on CPU: its threads) while fitting (None:
        the library's default). 1 by default: on a shared machine OpenBLAS threads spin-wait
        when cores are oversubscribed (a 1,200×256 fit took 28 s with 2 threads, 0.6 s with 1,
        at load 8).
    device : None, "numpy", "auto", "cpu", "cuda" or "cuda:<index>" — where to solve. None or
        "numpy": NumPy/SciPy (per-class Cholesky with rank-updated Gram matrices); "cpu",
        "cuda[:i]": torch in float64, all classes in one batched solve per step; "auto": CUDA
        when torch sees a GPU, else NumPy. The same algorithm and stopping rule everywhere.

    Attributes: ``coef_`` [K, d] (K = 1 for two classes, positive = ``classes_[1]``),
    ``intercept_`` [K], ``classes_``, ``n_iter_``, ``converged_`` (every class met the gradient
    test or reached the floating-point floor), ``at_floor_`` (some class stopped at the floor:
    optimal to machine precision, the gradient test unreachable; see ``newton_ovr``),
    ``device_`` (the backend used: "numpy", "cpu" or "cuda:<index>").
    """

    _parameter_constraints = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "blas_threads": [Interval(Integral, 1, None, closed="left"), None],
        "device": [DEVICES, None],
    }

    def __init__(self, C=1.0, tol=1e-3, max_iter=200, warm_start=False, blas_threads=1,
                 device=None):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.blas_threads = blas_threads
        self.device = device

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
        device = _backend(self.device)
        path = _solve(Xb, Y, W0, Cs, self.tol, self.max_iter, device, self.blas_threads)
        W, _, converged, floor = path[-1]
        if not converged:
            warnings.warn(f"FastLinearSVC did not converge in max_iter={self.max_iter} Newton "
                          "iterations; increase max_iter.", ConvergenceWarning)
        return self._set_solution(classes, W, sum(p[1] for p in path), converged, floor, device)

    def _set_solution(self, classes, W, n_iter, converged, at_floor, device):
        self.classes_, self.coef_, self.intercept_ = classes, W[:-1].T.copy(), W[-1].copy()
        self.n_iter_, self.converged_, self.at_floor_ = n_iter, converged, at_floor
        self.device_ = device
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
             blas_threads: int | None = 1, device: str | None = None) -> list[FastLinearSVC]:
    """One fitted FastLinearSVC per C (in the order given), each warm-started from the
    solution at the next smaller C and sharing one set of Newton systems (the Gram matrices
    follow the active sets, which change little from one C to the next). ``device`` as in
    FastLinearSVC; each model's ``device_`` says which backend ran."""
    params = dict(tol=tol, max_iter=max_iter, blas_threads=blas_threads, device=device)
    template = FastLinearSVC(**params)
    template._validate_params()
    X, y = validate_data(template, X, y, dtype=np.float64)
    classes, Y = _targets(y)
    Xb = _with_one(X)
    ascending = sorted(set(float(c) for c in Cs))
    warmup = _continuation(ascending[0], *Xb.shape)[:-1]  # start below a large first C
    used = _backend(device)
    path = _solve(Xb, Y, np.zeros((Xb.shape[1], Y.shape[1])), warmup + ascending, tol, max_iter,
                  used, blas_threads)[len(warmup):]
    fitted = {}
    for C, (W, n_iter, converged, floor) in zip(ascending, path):
        model = FastLinearSVC(C=C, **params)
        model.n_features_in_ = template.n_features_in_
        fitted[C] = model._set_solution(classes, W, n_iter, converged, floor, used)
    return [fitted[float(c)] for c in Cs]
