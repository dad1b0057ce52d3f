"""Centered kernel alignment (CKA; Kornblith et al., ICML 2019): how alike two models' embeddings
of the same images are, up to rotation and isotropic scale.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) for the Gram matrices K, L of the two
embeddings of the same N images. Linear: K = X Xᵀ. RBF: K_ij = exp(-‖x_i - x_j‖² / (2σ²)), with
σ = ``bandwidth`` × the median distance between distinct images (per model, recorded).

HSIC is estimated by the unbiased ("debiased") estimator of Song et al. (JMLR 2012): the plain
estimator tr(KHLH)/(N-1)² is biased upward when N is small against d (two random embeddings of
a few hundred images look alike to it), the unbiased one is not; both are reported, the debiased
one is the headline. Linear CKA is computed from d×d feature products (any N, no N×N matrix); the
RBF one needs N×N Grams, so it runs on at most ``rbf_images`` images (a seeded subsample,
recorded).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import pdist, squareform

from ..cache import Cache
from ..validation import VlmprobeError


def hsic(K: np.ndarray, L: np.ndarray, debiased: bool = True) -> float:
    """HSIC of two N×N Gram matrices: Song et al.'s unbiased estimator (``debiased``), or the
    plain tr(KHLH)/(N-1)² with H the centring matrix."""
    n = len(K)
    if debiased:
        if n < 4:
            raise VlmprobeError(f"The debiased HSIC needs at least 4 images; got {n}.")
        K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
        k1, l1 = K.sum(1), L.sum(1)
        return float((np.sum(K * L) + k1.sum() * l1.sum() / ((n - 1) * (n - 2))
                      - 2.0 / (n - 2) * (k1 @ l1)) / (n * (n - 3)))
    Kc = K - K.mean(0) - K.mean(1)[:, None] + K.mean()
    Lc = L - L.mean(0) - L.mean(1)[:, None] + L.mean()
    return float(np.sum(Kc * Lc) / (n - 1) ** 2)


def cka(K: np.ndarray, L: np.ndarray, debiased: bool = True) -> float:
    """CKA of two Gram matrices of the same images."""
    return hsic(K, L, debiased) / np.sqrt(hsic(K, K, debiased) * hsic(L, L, debiased))


def rbf_gram(X: np.ndarray, bandwidth: float) -> tuple[np.ndarray, float]:
    """The RBF Gram matrix with σ = ``bandwidth`` × the median distance between distinct rows,
    and that σ."""
    d2 = pdist(np.asarray(X, dtype=np.float64), "sqeuclidean")
    sigma = bandwidth * float(np.median(np.sqrt(d2)))
    if not sigma > 0:
        raise VlmprobeError("The RBF kernel's bandwidth is 0: over half the image pairs have "
                            "identical embeddings.")
    return squareform(np.exp(-d2 / (2 * sigma ** 2)), checks=False) + np.eye(len(X)), sigma


@dataclass
class _LinearStats:
    """What the linear HSICs of one model need, without an N×N matrix: the centred features,
    the Gram diagonal and row sums of K = X Xᵀ."""

    X: np.ndarray
    diag: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray) -> "_LinearStats":
        X = np.asarray(X, dtype=np.float64)
        X = X - X.mean(0)  # HSIC does not depend on it; the products are better conditioned
        diag = np.einsum("ij,ij->i", X, X)
        return cls(X, diag, X @ X.sum(0))


def _linear_hsic(a: _LinearStats, b: _LinearStats, debiased: bool) -> float:
    """HSIC of the linear kernels from feature products: ‖AᵀB‖²_F is Σ_ij K_ij L_ij, and the
    debiased estimator's other terms are sums of the Grams' rows and diagonals."""
    n = len(a.X)
    cross = a.X.T @ b.X
    total = float(np.sum(cross * cross))
    if not debiased:  # centred features: K and L are already HKH and HLH
        return total / (n - 1) ** 2
    k1, l1 = a.rows - a.diag, b.rows - b.diag  # row sums of the Grams without their diagonals
    trace = total - float(a.diag @ b.diag)
    return (trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * float(k1 @ l1)) / (n * (n - 3))


def linear_cka(X: np.ndarray, Y: np.ndarray, debiased: bool = True) -> float:
    """Linear CKA of two embeddings of the same images (rows), from d×d products."""
    a, b = _LinearStats.of(X), _LinearStats.of(Y)
    return _linear_hsic(a, b, debiased) / np.sqrt(_linear_hsic(a, a, debiased)
                                                  * _linear_hsic(b, b, debiased))


@dataclass
class CkaResult:
    """CKA between every pair of models on one dataset's shared images."""

    models: list[str]
    n_images: int
    linear: np.ndarray         # debiased, models × models
    linear_biased: np.ndarray
    rbf: np.ndarray            # debiased, on ``n_rbf`` images
    rbf_biased: np.ndarray
    n_rbf: int
    bandwidth: float           # σ as a fraction of the median distance
    sigma: list[float]         # σ per model
    seed: int

    def to_frame(self):
        """One row per pair of models (both orders), every estimate."""
        import pandas as pd

        return pd.DataFrame([
            {"model_a": a, "model_b": b, "linear_cka": self.linear[i, j],
             "linear_cka_biased": self.linear_biased[i, j], "rbf_cka": self.rbf[i, j],
             "rbf_cka_biased": self.rbf_biased[i, j], "n_images": self.n_images,
             "n_rbf": self.n_rbf, "bandwidth": self.bandwidth}
            for i, a in enumerate(self.models) for j, b in enumerate(self.models)])


def shared_rows(caches: list[Cache]) -> tuple[list[str], list[np.ndarray]]:
    """The images every cache embedded (sorted relpaths) and each cache's rows for them."""
    common = sorted(set.intersection(*(set(c.relpaths) for c in caches)))
    rows = []
    for c in caches:
        index = {r: i for i, r in enumerate(c.relpaths)}
        rows.append(c.embeddings[[index[r] for r in common]])
    return common, rows


def cka_matrix(caches: list[Cache], bandwidth: float = 0.5, rbf_images: int = 2000,
               seed: int = 0) -> CkaResult:
    """Linear and RBF CKA (debiased and plain) between the caches of one dataset, on the images
    they all embedded; the RBF one on at most ``rbf_images`` of them (seeded)."""
    if not bandwidth > 0:
        raise VlmprobeError(f"The RBF bandwidth must be > 0 (a fraction of the median distance, "
                            f"e.g. 0.5); got {bandwidth}.")
    names = [c.model + (" (baseline)" if c.baseline else "") for c in caches]
    common, embeddings = shared_rows(caches)
    n = len(common)
    if n < 4:
        raise VlmprobeError(f"CKA needs at least 4 images every model embedded; "
                            f"{', '.join(names)} share {n}.")
    stats = [_LinearStats.of(X) for X in embeddings]
    pick = np.sort(np.random.default_rng(seed).choice(n, min(n, rbf_images), replace=False))
    grams = [rbf_gram(X[pick], bandwidth) for X in embeddings]
    m = len(caches)
    out = {k: np.eye(m) for k in ("linear", "linear_biased", "rbf", "rbf_biased")}
    self_hsic = {(i, d): (_linear_hsic(s, s, d), hsic(grams[i][0], grams[i][0], d))
                 for i, s in enumerate(stats) for d in (True, False)}
    for i in range(m):
        for j in range(i + 1, m):
            for debiased, suffix in ((True, ""), (False, "_biased")):
                (li, ri), (lj, rj) = self_hsic[(i, debiased)], self_hsic[(j, debiased)]
                lin = _linear_hsic(stats[i], stats[j], debiased) / np.sqrt(li * lj)
                rbf = hsic(grams[i][0], grams[j][0], debiased) / np.sqrt(ri * rj)
                out["linear" + suffix][i, j] = out["linear" + suffix][j, i] = lin
                out["rbf" + suffix][i, j] = out["rbf" + suffix][j, i] = rbf
    return CkaResult(names, n, out["linear"], out["linear_biased"], out["rbf"],
                     out["rbf_biased"], len(pick), bandwidth, [s for _, s in grams], seed)
