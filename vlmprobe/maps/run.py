"""The UMAP stage over caches: every configuration of the grid per cache (maps, grid figures,
interactive HTML, metrics), and the models of one dataset side by side."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..cache import Cache
from ..validation import VlmprobeError
from .config import METRICS, UmapConfig, UmapGrid
from .figures import plot_compare, plot_grid, plot_map, read_thumbnails, stratified_choice
from .html import hover_images, probe_predictions, write_html
from .layout import grid_coords, umap_dir
from .metrics import map_scores, write_scores


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


def umap_caches(caches: list[Cache], grid: UmapGrid | UmapConfig = UmapGrid(),
                out: Path | None = None, color_by: list[str] = (), jobs: int = 1,
                thumbnails: int = 0, root: Path | None = None, log=print) -> list[Path]:
    """Every configuration of ``grid`` per cache: maps (PNG, SVG, HTML), grid figures, metrics,
    and models side by side for caches of one dataset; returns the PNGs.

    ``jobs=0`` uses one process per CPU core; ``thumbnails`` example images per map, read from
    ``root`` or the folder the cache was extracted from.
    """
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
