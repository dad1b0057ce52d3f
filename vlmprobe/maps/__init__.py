"""UMAP maps of cached embeddings: the n_neighbors × min_dist grid, with numbers (docs/protocol.md).

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

Modules: :mod:`.config` (one map, the grid), :mod:`.knn` (one exact kNN graph per cache and
metric), :mod:`.layout` (fits, saved coordinates), :mod:`.metrics` (numbers per map),
:mod:`.figures` and :mod:`.html` (drawing), :mod:`.run` (the stage over caches).
"""
from .config import METRICS, UmapConfig, UmapGrid
from .knn import knn_graph
from .layout import fit_map, grid_coords
from .metrics import map_scores, neighbourhood_scores
from .run import UmapMaps, UmapRun, check_input, run_umap

__all__ = ["METRICS", "UmapConfig", "UmapGrid", "UmapMaps", "UmapRun", "check_input", "fit_map",
           "grid_coords", "knn_graph", "map_scores", "neighbourhood_scores", "run_umap"]
