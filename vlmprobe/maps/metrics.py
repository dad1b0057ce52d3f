"""Numbers per map.

**Metrics** (k = 10 for every configuration, so numbers compare across n_neighbors; (N-1)//2 when N
is tiny): trustworthiness (sklearn's definition; original space in the grid's metric, 2-D
Euclidean), kNN preservation (mean fraction of each point's k nearest original-space neighbours that
are among its k nearest in 2-D), silhouette of the class labels and accuracy of a k-NN classifier
(stratified 5-fold CV, seeded), each in 2-D and in the original space. Trustworthiness is computed
from distance rows in chunks, so memory stays bounded at 30k points (one pass serves all maps: 7 s
and 91 MB peak for 9 maps at 10k points, d=768); the cosine and correlation silhouettes from
per-class sums of unit rows (exact, no N×N distances). Metrics are cheap next to the fits, so they are
recomputed on every run rather than stored.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numba
import numpy as np
from sklearn.metrics import pairwise_distances, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from ..cache import Cache
from ..cache.chunks import write_atomic, written_beside
from ..provenance import provenance
from .config import UmapGrid

METRIC_K = 10


def neighbourhood_scores(X: np.ndarray, maps: list[np.ndarray], k: int, metric: str,
                         block: int = 1 << 22) -> list[dict]:
    """Trustworthiness and kNN preservation of each 2-D map, from original-space distance rows.

    The same trustworthiness as ``sklearn.manifold.trustworthiness``, which holds N×N distance and
    rank matrices (≈ 19 GB at 28k points); here a chunk of rows holds about ``block`` distances
    (32 MB), and one pass over the rows serves every map. The original-space rank of a 2-D
    neighbour is 1 + the number of points closer; sklearn's argsort rank differs only on exact ties.
    """
    n = len(X)
    nn2d = [NearestNeighbors(n_neighbors=k).fit(Y).kneighbors(return_distance=False)
            for Y in maps]
    penalty, kept = np.zeros(len(maps)), np.zeros(len(maps))
    step = max(1, block // n)
    for start in range(0, n, step):
        rows = np.arange(start, min(start + step, n))
        d = pairwise_distances(X[rows], X, metric=metric)
        d[np.arange(len(rows)), rows] = np.inf  # a point is not its own neighbour
        ranks = _ranks(d, np.hstack([nn[rows] for nn in nn2d])).reshape(len(rows), -1, k)
        penalty += np.clip(ranks - k, 0, None).sum(axis=(0, 2))
        kept += (ranks <= k).sum(axis=(0, 2))
    norm = 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))
    return [{"trustworthiness": 1.0 - p * norm, "knn_preservation": c / (n * k)}
            for p, c in zip(penalty, kept)]


@numba.njit(parallel=True, cache=True)
def _ranks(d, columns):
    """Rank of ``d[i, columns[i, j]]`` in row i: 1 + the number of smaller entries.

    One pass over the row with a binary search among the few sorted queries, not a sort of the
    row: O(N log q) instead of O(N log N).
    """
    out = np.empty(columns.shape, dtype=np.int64)
    for i in numba.prange(d.shape[0]):
        queries = np.empty(columns.shape[1])
        for j in range(columns.shape[1]):
            queries[j] = d[i, columns[i, j]]
        order = np.argsort(queries)
        ordered = queries[order]
        smaller_from = np.zeros(len(queries) + 1, dtype=np.int64)  # x < ordered[pos:]
        for x in d[i]:
            smaller_from[np.searchsorted(ordered, x, side="right")] += 1
        below = np.cumsum(smaller_from)
        for j in range(len(queries)):
            out[i, order[j]] = 1 + below[j]
    return out


def _silhouette(X, y, metric: str) -> float:
    if not 2 <= len(np.unique(y)) < len(y):
        return float("nan")
    if metric in ("cosine", "correlation"):
        return _angular_silhouette(X, y, metric)
    if metric == "euclidean" and X.shape[1] == 2:
        y = np.unique(y, return_inverse=True)[1]
        return float(_planar_silhouette(np.asarray(X, np.float64), y, y.max() + 1))
    return float(silhouette_score(X, y, metric=metric))


@numba.njit(parallel=True, cache=True)
def _planar_silhouette(Y, y, n_classes):
    """sklearn's euclidean silhouette of a 2-D map without an N×N matrix (10× faster at 10k)."""
    n = Y.shape[0]
    counts = np.bincount(y, minlength=n_classes)
    s = np.zeros(n)
    for i in numba.prange(n):
        sums = np.zeros(n_classes)
        for j in range(n):
            sums[y[j]] += np.sqrt((Y[i, 0] - Y[j, 0]) ** 2 + (Y[i, 1] - Y[j, 1]) ** 2)
        own = counts[y[i]]
        if own > 1:
            a = sums[y[i]] / (own - 1)
            b = np.inf
            for c in range(n_classes):
                if c != y[i] and counts[c] > 0:
                    b = min(b, sums[c] / counts[c])
            if max(a, b) > 0:
                s[i] = (b - a) / max(a, b)
    return s.mean()


def _angular_silhouette(X: np.ndarray, y: np.ndarray, metric: str) -> float:
    """sklearn's silhouette for cosine/correlation without N×N distances (≈ 5 s at 10k × 768).

    With unit rows z, the summed distance of a point to a cluster is n_c - z·(sum of the
    cluster's z): linear, so per-cluster sums of z give every mean distance exactly.
    """
    Z = np.asarray(X, np.float64)
    if metric == "correlation":
        Z = Z - Z.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    Z = Z / np.where(norms == 0, 1, norms)
    classes, y = np.unique(y, return_inverse=True)
    counts = np.bincount(y).astype(np.float64)
    sums = np.zeros((len(classes), Z.shape[1]))
    np.add.at(sums, y, Z)
    mean_dist = (counts - Z @ sums.T) / counts  # mean distance to each cluster, self included
    rows = np.arange(len(y))
    own = counts[y]
    # own cluster: the self term 1 - |z|^2 (0 for unit rows, 1 for zero rows) taken out
    a = (mean_dist[rows, y] * own - (1 - np.einsum("ij,ij->i", Z, Z))) / np.maximum(own - 1, 1)
    mean_dist[rows, y] = np.inf
    b = mean_dist.min(axis=1)
    s = np.where(own > 1, (b - a) / np.maximum(a, b), 0.0)
    return float(np.nan_to_num(s).mean())


def _knn_accuracy(X, y, k: int, metric: str, seed: int) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=k, metric=metric)
    return float(cross_val_score(clf, X, y, cv=cv).mean())


def map_scores(cache: Cache, grid: UmapGrid, coords: list[np.ndarray]) -> list[dict]:
    """One row of metrics per configuration (original-space numbers repeated for a flat table)."""
    X, y, n = cache.embeddings, cache.labels, len(cache.labels)
    k = min(METRIC_K, (n - 1) // 2)
    orig = {"silhouette_orig": _silhouette(X, y, grid.metric),
            "knn_acc_orig": _knn_accuracy(X, y, k, grid.metric, grid.seed)}
    neigh = neighbourhood_scores(X, coords, k, grid.metric)
    return [{**asdict(cfg), "n": n, "k": k, **nb,
             "silhouette_2d": _silhouette(c, y, "euclidean"),
             "knn_acc_2d": _knn_accuracy(c, y, k, "euclidean", grid.seed), **orig}
            for cfg, c, nb in zip(grid.configs(), coords, neigh)]


def write_scores(cache: Cache, grid: UmapGrid, rows: list[dict], stem: Path) -> list[Path]:
    csv_path, json_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")
    with written_beside(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = provenance(stage="umap", model=cache.model, dataset=cache.dataset,
                      cache_key=cache.cache_key, grid=asdict(grid))
    write_atomic(json_path, json.dumps({"provenance": meta, "rows": rows}, indent=1, default=str))
    return [csv_path, json_path]
