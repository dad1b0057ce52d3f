"""The UMAP stage over caches: every configuration of the grid per cache (maps, grid figures,
interactive HTML, metrics), and the models of one dataset side by side."""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import Cache, stage_inputs
from ..validation import VlmprobeError, with_options
from .config import METRICS, UmapConfig, UmapGrid
from .figures import plot_compare, plot_grid, plot_map, read_thumbnails, stratified_choice
from .html import hover_images, probe_predictions, write_html
from .layout import grid_coords, umap_dir
from .metrics import map_scores, write_scores

log = logging.getLogger(__name__)


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


@dataclass
class UmapMaps:
    """One cache's maps: coordinates and numbers per configuration, and the files drawn."""

    cache: Cache
    grid: UmapGrid
    coords: list[np.ndarray]  # [N, 2] per configuration, in grid.configs() order
    scores: list[dict]        # its metrics (docs/protocol.md, UMAP), same order
    figures: list[Path]       # PNG (SVG beside) per configuration, then the grid figures
    pages: list[Path]         # the interactive HTML per configuration
    metrics_files: list[Path]

    def to_frame(self):
        """One row per configuration: its parameters and metrics."""
        import pandas as pd

        return pd.DataFrame([{"model": self.cache.model, "dataset": self.cache.dataset, **s}
                             for s in self.scores])


@dataclass
class UmapRun(Sequence):
    """The UMAP stage's results: :class:`UmapMaps` per cache (a sequence of them), and the figures
    putting the models of one dataset side by side."""

    maps: list[UmapMaps]
    comparisons: list[Path] = field(default_factory=list)

    def __getitem__(self, i):
        return self.maps[i]

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def figures(self) -> list[Path]:
        """Every PNG written: each cache's maps and grids, then the side-by-side figures."""
        return [f for m in self.maps for f in m.figures] + self.comparisons

    def to_frame(self):
        import pandas as pd

        return pd.concat([m.to_frame() for m in self.maps], ignore_index=True)


def run_umap(caches=None, grid: UmapGrid | UmapConfig | None = None, *,
             out: str | Path | None = None, tap: str | None = None, color_by: Sequence[str] = (),
             jobs: int = 0, thumbnails: int = 0, root: str | Path | None = None,
             **options) -> UmapRun:
    """Every configuration of ``grid`` per cache: maps (PNG, SVG, HTML), grid figures, metrics,
    and models side by side for caches of one dataset (docs/protocol.md, UMAP).

    ``caches``: as :func:`vlmprobe.cache.stage_inputs` takes them. ``grid``: a
    :class:`UmapGrid` (default 3 × 3) or one :class:`UmapConfig`; keyword ``options`` change its
    settings (``run_umap(caches, metric="euclidean", n_neighbors=(15,))``). ``color_by``: also
    colour by these metadata columns. ``jobs=0``: one process per CPU core. ``thumbnails``:
    example images per map, read from ``root`` or the folder the cache was extracted from.
    """
    grid = UmapGrid.single(grid) if isinstance(grid, UmapConfig) else grid or UmapGrid()
    grid = with_options(grid, options)
    caches, out = stage_inputs(caches, out, tap)
    color_by = list(color_by)
    if thumbnails < 0:
        raise VlmprobeError(f"--thumbnails {thumbnails}: give a number of images >= 0.")
    for cache in caches:  # all input checked before the first (slow) fit
        check_input(cache, grid)
        for col in color_by:
            cache.label_view(col)
    done = []
    for cache in caches:
        folder = umap_dir(cache, out)
        coords = grid_coords(cache, grid, out, jobs or os.cpu_count())
        scores = map_scores(cache, grid, coords)
        tables = write_scores(cache, grid, scores,
                              folder / f"{cache.output_name}.{grid.tag()}.metrics")
        shown = read_thumbnails(cache, stratified_choice(cache.labels, thumbnails, grid.seed),
                                root) if thumbnails else {}
        hover, preds = hover_images(cache, grid.seed, root), probe_predictions(cache, out)
        pngs, pages = [], []
        for cfg, c in zip(grid.configs(), coords):
            stem = folder / f"{cache.output_name}.{cfg.tag()}"
            pngs.append(plot_map(cache, c, cfg, stem, color_by, shown)[0])
            pages.append(write_html(cache, c, cfg, stem, hover, preds, color_by))
        if len(coords) > 1:
            for col in [None, *color_by]:
                stem = folder / f"{cache.output_name}.{grid.tag()}.grid{f'.by-{col}' if col else ''}"
                pngs.append(plot_grid(cache, grid, coords, scores, stem, col)[0])
        log.info(f"{cache.model} / {cache.dataset}: {len(coords)} maps (PNG, SVG, HTML) in "
                 f"{folder}, metrics {tables[0]}")
        done.append((UmapMaps(cache, grid, coords, scores, pngs, pages, tables), shown))
    return UmapRun([m for m, _ in done], _compare(done, grid, out, color_by))


def _compare(done: list[tuple[UmapMaps, dict]], grid: UmapGrid, out: Path | None,
             color_by: list[str]) -> list[Path]:
    """One figure per configuration (and --color-by column) with every cache of a dataset side by
    side; caches of different datasets, or of one dataset with different images, are not mixed.
    ``done``: each cache's maps with the thumbnails drawn on them."""
    groups: dict[tuple, list[tuple[UmapMaps, dict]]] = {}
    for maps, shown in done:
        c = maps.cache
        groups.setdefault((c.dataset, c.view_tag, tuple(c.relpaths)), []).append((maps, shown))
    datasets = sorted({ds for ds, _, _ in groups})
    if len(datasets) > 1:
        log.info(f"caches of {len(datasets)} datasets ({', '.join(datasets)}): models are "
                 "compared side by side only within a dataset")
    pngs = []
    for (dataset, view, _), members in groups.items():
        if sum(key[:2] == (dataset, view) for key in groups) > 1:
            log.warning(f"{dataset}: caches with different image lists (e.g. "
                        f"{members[0][0].cache.path}) are not put side by side; re-extract them "
                        "from the same dataset copy to compare")
        if len(members) < 2:
            continue
        caches = [m.cache for m, _ in members]
        folder = umap_dir(caches[0], out)
        for j, cfg in enumerate(grid.configs()):
            for col in [None, *color_by]:
                stem = folder / f"compare{view}.{cfg.tag()}{f'.by-{col}' if col else ''}"
                pngs.append(plot_compare(caches, [m.coords[j] for m, _ in members],
                                         [m.scores[j] for m, _ in members], cfg, stem, col,
                                         members[0][1])[0])
        log.info(f"{dataset}: {len(caches)} models side by side "
                 f"({', '.join(c.model for c in caches)}) in {folder}/compare.*.png")
    return pngs
