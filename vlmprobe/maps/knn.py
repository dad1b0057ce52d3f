"""One kNN graph per (cache, metric). It is computed at the largest n_neighbors still to fit and
sliced by vlmprobe to each n_neighbors, passed as ``precomputed_knn``. vlmprobe slices because
umap-learn 0.5.12 prunes a wider precomputed graph only for N >= 4096: below that it keeps every
column while calibrating sigma to ``n_neighbors``, a different graph from a fresh fit. Below 4096
points umap-learn computes exact distances itself (``pairwise_distances`` with its numba metric,
then a stable argsort), once per fit; vlmprobe computes the same values once per grid, so a slice
equals a fresh fit's graph and the map equals a fresh fit's map bit for bit. From 4096 points on
umap-learn switches to pynndescent's approximate graph; vlmprobe instead computes the *exact*
neighbours for cosine, correlation and euclidean as matrix products in blocks of rows (2 s at
10k × 768 on 2 cores, against ≈ 25 s for pynndescent's first, compiling call): a graph at least
as good, and the same whatever the seed. Other metrics use pynndescent as umap-learn does, once per
grid (seeded, single-threaded, so reproducible). Either way maps at N >= 4096 are not bit-equal to
a fresh umap-learn fit, only as good (benchmarks/umap.py prints each map's trustworthiness beside
the plain loop's).
"""
from __future__ import annotations

import numba
import numpy as np
from sklearn.utils import check_random_state

EXACT_KNN_BELOW = 4096  # umap-learn computes exact distances below this many points


MATRIX_METRICS = ("cosine", "correlation", "euclidean")  # kNN as matrix products


def knn_graph(X: np.ndarray, k: int, metric: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's k nearest (itself first): exact at every N where the metric allows it.

    Below 4096 points as umap-learn computes them; from there on umap-learn approximates with
    pynndescent, while vlmprobe computes the exact neighbours of cosine, correlation and
    euclidean as matrix products in row blocks (the module docstring says why).
    """
    if len(X) < EXACT_KNN_BELOW:
        from umap.distances import named_distances

        d = _pairwise(X, named_distances[metric])
        idx = np.argsort(d, axis=1, kind="stable")[:, :k]
        return idx.astype(np.int32), np.take_along_axis(d, idx, 1).astype(np.float32)
    if metric in MATRIX_METRICS:
        return _blocked_knn(X, k, metric)
    from umap.umap_ import nearest_neighbors

    idx, dist, _ = nearest_neighbors(X, k, metric, {}, False, check_random_state(seed), n_jobs=1)
    return idx, dist


def _blocked_knn(X: np.ndarray, k: int, metric: str, rows: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN from one block of distance rows at a time (rows × N floats, 120 MB at 30k)."""
    n = len(X)
    if metric == "euclidean":  # float64: |x|^2 + |y|^2 - 2xy cancels for close points
        Z = X.astype(np.float64)
        sq = np.einsum("ij,ij->i", Z, Z)
    else:
        Z = X - X.mean(axis=1, keepdims=True) if metric == "correlation" else X
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        Z = (Z / np.where(norms == 0, 1, norms)).astype(np.float32)  # a zero row: distance 1
    idx, dist = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
    for start in range(0, n, rows):
        block = slice(start, min(start + rows, n))
        if metric == "euclidean":
            d = sq[block, None] + sq[None, :] - 2.0 * (Z[block] @ Z.T)
            np.sqrt(np.maximum(d, 0.0, out=d), out=d)
        else:
            d = 1.0 - Z[block] @ Z.T
        own = np.arange(block.stop - start)
        d[own, own + start] = -np.inf  # a point is its own first neighbour, even among duplicates
        near = np.argpartition(d, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(near, np.argsort(np.take_along_axis(d, near, 1), axis=1,
                                                   kind="stable"), 1)
        idx[block], dist[block] = near, np.maximum(np.take_along_axis(d, near, 1), 0.0)
    return idx, dist


@numba.njit(parallel=True)
def _pairwise(X, dist):
    """What umap-learn's fit computes below 4096 points, ``pairwise_distances(X, metric=dist)``
    with its numba metric, bit for bit (upper triangle, mirrored), but on all cores: sklearn calls
    the metric from a Python loop (≈ 7 s at 2k points, 0.5 s here)."""
    n = X.shape[0]
    out = np.empty((n, n), dtype=X.dtype)
    for i in numba.prange(n):
        for j in range(i, n):
            out[i, j] = dist(X[i], X[j])
    for i in numba.prange(n):
        for j in range(i):
            out[i, j] = out[j, i]
    return out
