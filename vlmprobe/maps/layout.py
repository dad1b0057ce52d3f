"""UMAP fits and their saved coordinates.

**Reproducibility.** With a seed umap-learn runs the layout single-threaded, so the same seed gives
the same coordinates run to run. Speed comes from fitting configurations side by side instead
(``jobs``, ``--jobs``): each is seeded on its own, so the coordinates do not depend on ``jobs``.

Coordinates are saved per configuration (``<model>.<cfg>.npz``, with the cache key) and read back
while the cache is unchanged, never recomputed.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..cache import Cache, stage_dir
from ..cache.chunks import written_beside
from ..validation import read_npz
from .config import UmapConfig, UmapGrid
from .knn import knn_graph

log = logging.getLogger(__name__)


def umap_dir(cache: Cache, out: Path | None) -> Path:
    return stage_dir(cache.path, cache.dataset, "umap", out)


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
        saved = read_npz(path, "UMAP coordinates file", "delete it to compute the map again.")
        if str(saved["cache_key"]) == cache.cache_key:
            return saved["coords"]
    return None


def grid_coords(cache: Cache, grid: UmapGrid, out: Path | None = None,
                jobs: int = 1) -> list[np.ndarray]:
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
    log.info(f"{cache.model} / {cache.dataset}: kNN graph (k={knn[0].shape[1]}, N={len(X)}) in "
        f"{time.perf_counter() - t0:.1f} s; fitting {len(todo)} of {len(configs)} maps")
    jobs = 1 if grid.fast else min(jobs, len(todo))  # unseeded, each fit uses every core
    fits = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(fit_map)(X, configs[i], knn) for i in todo)
    for i, c in zip(todo, fits):
        coords[i], path = c, _coords_path(cache, configs[i], out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_beside(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, coords=c, relpaths=np.array(cache.relpaths), cache_key=cache.cache_key,
                     config=json.dumps(asdict(configs[i])))
        log.info(f"  {configs[i].tag()} saved at {time.perf_counter() - t0:.1f} s")
    return coords
