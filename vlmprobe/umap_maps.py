"""UMAP maps of cached embeddings (protocol.md §3): the n_neighbors × min_dist grid, with numbers.

**Grid.** The paper inspected a grid of ``n_neighbors`` and ``min_dist`` but does not list it. With
no grid options vlmprobe computes n_neighbors 5, 15, 50 × min_dist 0.0, 0.1, 0.5 (a choice: local to
global structure, packed to spread out); one value per option gives one map.

**Files**, in ``<dataset>/umap/`` beside the cache (``<cfg>`` = ``cosine-nn15-md0.1-seed0``, or
``...-fast`` with ``--fast``)::

    <model>.<cfg>.npz               coordinates + configuration + cache_key: an unchanged
                                    configuration is read back, never recomputed
    <model>.<cfg>.png/.svg          one map per configuration (+ a panel per --color-by column;
                                    --thumbnails K example images beside their points)
    <model>.<cfg>.html              the same map, interactive and self-contained (offline): hover
                                    shows image, path, label and the probe's test prediction
    <model>.<grid>.grid[.by-<col>].png/.svg   rows n_neighbors, columns min_dist, metrics on the
                                    panels (only for grids of more than one map)
    <model>.<grid>.metrics.csv/.json          one row of metrics per configuration
    compare.<cfg>[.by-<col>].png/.svg         several caches of one dataset (same images): one
                                    panel per model, same colours, each with its metrics

``<model>`` carries ``@<view>`` for a label view's cache (``<model>@<view>.h5``, e.g. HiCervix
``--label-level 1``), and ``compare`` too, so two views' outputs never overwrite each other.

Figures and the HTML are drawn by vlmprobe/umap_figures.py and vlmprobe/umap_html.py.

**One kNN graph per (cache, metric).** It is computed at the largest n_neighbors still to fit and
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

**Reproducibility.** With a seed umap-learn runs the layout single-threaded, so the same seed gives
the same coordinates run to run. Speed comes from fitting configurations side by side instead
(``jobs``, ``--jobs``): each is seeded on its own, so the coordinates do not depend on ``jobs``.

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
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numba
import numpy as np
from sklearn.metrics import pairwise_distances, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.utils import check_random_state

from .cache import Cache
from .paths import stage_dir
from .provenance import provenance
from .validation import VlmprobeError

EXACT_KNN_BELOW = 4096  # umap-learn computes exact distances below this many points
METRIC_K = 10
# Real-valued, parameter-free metrics that umap-learn and scikit-learn (the metrics) both know. A
# fixed list, not umap-learn's table, so checking it does not import (and compile) umap-learn.
METRICS = ("cosine", "correlation", "euclidean", "manhattan", "chebyshev", "braycurtis", "canberra")
MATRIX_METRICS = ("cosine", "correlation", "euclidean")  # kNN as matrix products


@dataclass(frozen=True)
class UmapConfig:
    """One map."""

    metric: str = "cosine"
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0
    fast: bool = False  # --fast: umap-learn unseeded (multi-threaded, not reproducible)

    def tag(self) -> str:
        return f"{self.metric}-nn{self.n_neighbors}-md{self.min_dist:g}-{_seed_tag(self)}"


def _seed_tag(cfg) -> str:
    return "fast" if cfg.fast else f"seed{cfg.seed}"


def seed_text(cfg) -> str:
    """For figure titles (a UmapConfig or UmapGrid): the seed, or that there is none."""
    return "unseeded (--fast)" if cfg.fast else f"seed={cfg.seed}"


@dataclass(frozen=True)
class UmapGrid:
    """Every (n_neighbors, min_dist) pair, one seed and metric; the module docstring says why 3×3."""

    metric: str = "cosine"
    n_neighbors: tuple[int, ...] = (5, 15, 50)
    min_dist: tuple[float, ...] = (0.0, 0.1, 0.5)
    seed: int = 0
    fast: bool = False

    @classmethod
    def parse(cls, metric: str, n_neighbors: str | None, min_dist: str | None,
              seed: int, fast: bool = False) -> UmapGrid:
        """From the CLI's comma lists; an option left out takes the default grid's values."""
        nn = _numbers(n_neighbors, int, "--n-neighbors") if n_neighbors else cls.n_neighbors
        md = _numbers(min_dist, float, "--min-dist") if min_dist else cls.min_dist
        return cls(metric=metric, n_neighbors=nn, min_dist=md, seed=seed, fast=fast)

    @classmethod
    def single(cls, cfg: UmapConfig) -> UmapGrid:
        return cls(cfg.metric, (cfg.n_neighbors,), (cfg.min_dist,), cfg.seed, cfg.fast)

    def configs(self) -> list[UmapConfig]:
        """Row-major: n_neighbors down the grid figure, min_dist across."""
        return [UmapConfig(self.metric, nn, md, self.seed, self.fast)
                for nn in self.n_neighbors for md in self.min_dist]

    def tag(self) -> str:
        nn = "_".join(str(v) for v in self.n_neighbors)
        md = "_".join(f"{v:g}" for v in self.min_dist)
        return f"{self.metric}-nn{nn}-md{md}-{_seed_tag(self)}"


def _numbers(text: str, kind, option: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise VlmprobeError(f"{option} {text!r}: expected comma-separated {kind.__name__}s, "
                            f"e.g. {option} 5,15,50.") from None
    if len(set(values)) != len(values):
        raise VlmprobeError(f"{option} {text!r} repeats a value.")
    return values


def umap_dir(cache: Cache, out: Path | None) -> Path:
    return stage_dir(cache.path, cache.dataset, "umap", out)


def check_input(cache: Cache, grid: UmapGrid) -> None:
    """Refuse grids UMAP cannot fit on this cache; warn about duplicates, which make ranks ties."""
    n, X = len(cache.embeddings), cache.embeddings
    if grid.metric not in METRICS:
        raise VlmprobeError(f"--metric {grid.metric!r} is not one both umap-learn and scikit-learn "
                            f"know without parameters; use one of {', '.join(METRICS)}.")
    if min(grid.n_neighbors) < 2 or max(grid.n_neighbors) >= n:
        raise VlmprobeError(f"{cache.path}: {n} images, but n_neighbors="
                            f"{list(grid.n_neighbors)}; each --n-neighbors value must be between "
                            f"2 and {n - 1}.")
    if min(grid.min_dist) < 0 or max(grid.min_dist) > 1:
        raise VlmprobeError(f"--min-dist {list(grid.min_dist)}: each value must be in [0, 1] "
                            "(UMAP's spread is 1).")
    if n < 5:
        raise VlmprobeError(f"{cache.path}: {n} images are too few for a map.")
    if np.all(X == X[0]):
        raise VlmprobeError(f"{cache.path}: all {n} embeddings are identical, so a map would "
                            "show nothing; the encoder produced a constant output. Re-run "
                            "`vlmprobe extract` or check the model.")
    duplicates = n - len(np.unique(X, axis=0))
    if duplicates:
        warnings.warn(f"{cache.path}: {duplicates} of {n} embeddings duplicate another; "
                      "duplicates land on one point and their neighbour ranks are ties.",
                      stacklevel=2)


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


def fit_map(X: np.ndarray, cfg: UmapConfig, knn: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Fit one configuration on the first ``cfg.n_neighbors`` columns of a shared kNN graph.

    ``cfg.fast``: no seed, so umap-learn runs its layout on every core (not reproducible).
    """
    import umap  # umap-learn; imported late, numba compilation is slow

    k = cfg.n_neighbors  # copies: umap-learn writes into the graph it is given, which may be
    sliced = (knn[0][:, :k].copy(), knn[1][:, :k].copy())  # shared or joblib's read-only memmap
    reducer = umap.UMAP(n_neighbors=k, min_dist=cfg.min_dist, metric=cfg.metric,
                        random_state=None if cfg.fast else cfg.seed, n_components=2,
                        n_jobs=-1 if cfg.fast else 1, precomputed_knn=sliced)
    with warnings.catch_warnings():  # no search index: vlmprobe never calls transform()
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        warnings.filterwarnings("ignore", message="n_jobs value 1 overridden")  # it is 1 anyway
        return reducer.fit_transform(X).astype(np.float32)


def _coords_path(cache: Cache, cfg: UmapConfig, out: Path | None) -> Path:
    return umap_dir(cache, out) / f"{cache.output_name}.{cfg.tag()}.npz"


def _load(path: Path, cache: Cache) -> np.ndarray | None:
    if path.is_file():
        saved = np.load(path, allow_pickle=False)
        if str(saved["cache_key"]) == cache.cache_key:
            return saved["coords"]
    return None


def grid_coords(cache: Cache, grid: UmapGrid, out: Path | None = None, jobs: int = 1,
                log=print) -> list[np.ndarray]:
    """Coordinates of every configuration: saved ones read back, the rest fitted on one kNN graph.

    Configurations run in ``jobs`` processes (each pays numba's compilation once); every one is
    seeded on its own, so the coordinates do not depend on ``jobs``.
    """
    from joblib import Parallel, delayed

    configs = grid.configs()
    coords = [_load(_coords_path(cache, cfg, out), cache) for cfg in configs]
    # the widest graphs take longest: started first, they leave no core idle at the end
    todo = sorted((i for i, c in enumerate(coords) if c is None),
                  key=lambda i: -configs[i].n_neighbors)
    if not todo:
        return coords
    X = np.asarray(cache.embeddings, np.float32)
    t0 = time.perf_counter()
    knn = knn_graph(X, max(configs[i].n_neighbors for i in todo), grid.metric, grid.seed)
    log(f"{cache.model} / {cache.dataset}: kNN graph (k={knn[0].shape[1]}, N={len(X)}) in "
        f"{time.perf_counter() - t0:.1f} s; fitting {len(todo)} of {len(configs)} maps")
    jobs = 1 if grid.fast else min(jobs, len(todo))  # unseeded, each fit uses every core
    fits = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(fit_map)(X, configs[i], knn) for i in todo)
    for i, c in zip(todo, fits):
        coords[i], path = c, _coords_path(cache, configs[i], out)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, coords=c, relpaths=np.array(cache.relpaths), cache_key=cache.cache_key,
                 config=json.dumps(asdict(configs[i])))
        log(f"  {configs[i].tag()} saved at {time.perf_counter() - t0:.1f} s")
    return coords


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
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = provenance(stage="umap", model=cache.model, dataset=cache.dataset,
                      cache_key=cache.cache_key, grid=asdict(grid))
    json_path.write_text(json.dumps({"provenance": meta, "rows": rows}, indent=1, default=str))
    return [csv_path, json_path]


def umap_caches(caches: list[Cache], grid: UmapGrid | UmapConfig = UmapGrid(),
                out: Path | None = None, color_by: list[str] = (), jobs: int = 1,
                thumbnails: int = 0, root: Path | None = None, log=print) -> list[Path]:
    """Every configuration of ``grid`` per cache: maps (PNG, SVG, HTML), grid figures, metrics,
    and models side by side for caches of one dataset; returns the PNGs.

    ``jobs=0`` uses one process per CPU core; ``thumbnails`` example images per map, read from
    ``root`` or the folder the cache was extracted from.
    """
    from .umap_figures import plot_grid, plot_map, read_thumbnails, stratified_choice
    from .umap_html import hover_images, probe_predictions, write_html

    if isinstance(grid, UmapConfig):
        grid = UmapGrid.single(grid)
    if thumbnails < 0:
        raise VlmprobeError(f"--thumbnails {thumbnails}: give a number of images >= 0.")
    for cache in caches:  # all input checked before the first (slow) fit
        check_input(cache, grid)
        for col in color_by:
            cache.label_view(col)
    pngs, done = [], []
    for cache in caches:
        folder = umap_dir(cache, out)
        coords = grid_coords(cache, grid, out, jobs or os.cpu_count(), log)
        scores = map_scores(cache, grid, coords)
        tables = write_scores(cache, grid, scores,
                              folder / f"{cache.output_name}.{grid.tag()}.metrics")
        shown = read_thumbnails(cache, stratified_choice(cache.labels, thumbnails, grid.seed),
                                root) if thumbnails else {}
        hover, preds = hover_images(cache, grid.seed, root), probe_predictions(cache, out)
        for cfg, c in zip(grid.configs(), coords):
            stem = folder / f"{cache.output_name}.{cfg.tag()}"
            pngs.append(plot_map(cache, c, cfg, stem, color_by, shown)[0])
            write_html(cache, c, cfg, stem, hover, preds, color_by)
        if len(coords) > 1:
            for col in [None, *color_by]:
                stem = folder / f"{cache.output_name}.{grid.tag()}.grid{f'.by-{col}' if col else ''}"
                pngs.append(plot_grid(cache, grid, coords, scores, stem, col)[0])
        log(f"{cache.model} / {cache.dataset}: {len(coords)} maps (PNG, SVG, HTML) in {folder}, "
            f"metrics {tables[0]}")
        done.append((cache, coords, scores, shown))
    return pngs + _compare(done, grid, out, color_by, log)


def _compare(done: list[tuple], grid: UmapGrid, out: Path | None, color_by: list[str],
             log) -> list[Path]:
    """One figure per configuration (and --color-by column) with every cache of a dataset side by
    side; caches of different datasets, or of one dataset with different images, are not mixed."""
    from .umap_figures import plot_compare

    groups: dict[tuple, list[tuple]] = {}
    for d in done:
        groups.setdefault((d[0].dataset, d[0].view_tag, tuple(d[0].relpaths)), []).append(d)
    datasets = sorted({ds for ds, _, _ in groups})
    if len(datasets) > 1:
        log(f"caches of {len(datasets)} datasets ({', '.join(datasets)}): models are compared "
            "side by side only within a dataset")
    pngs = []
    for (dataset, view, _), members in groups.items():
        if sum(key[:2] == (dataset, view) for key in groups) > 1:
            log(f"{dataset}: caches with different image lists (e.g. {members[0][0].path}) are "
                "not put side by side; re-extract them from the same dataset copy to compare")
        if len(members) < 2:
            continue
        caches = [m[0] for m in members]
        folder = umap_dir(caches[0], out)
        for j, cfg in enumerate(grid.configs()):
            for col in [None, *color_by]:
                stem = folder / f"compare{view}.{cfg.tag()}{f'.by-{col}' if col else ''}"
                pngs.append(plot_compare(caches, [m[1][j] for m in members],
                                         [m[2][j] for m in members], cfg, stem, col,
                                         members[0][3])[0])
        log(f"{dataset}: {len(caches)} models side by side "
            f"({', '.join(c.model for c in caches)}) in {folder}/compare.*.png")
    return pngs
