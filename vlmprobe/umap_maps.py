"""UMAP maps of cached embeddings (protocol.md §3): coordinates saved, figures redrawn from them.

Coordinates go to ``<dataset>/umap/<model>.<params>.npz`` beside the cache with the parameters,
so an unchanged configuration is never recomputed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .cache import Cache
from .figures import STYLE, plt, save_figure
from .provenance import provenance
from .validation import VlmprobeError


@dataclass(frozen=True)
class UmapConfig:
    metric: str = "cosine"
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0

    def tag(self) -> str:
        return f"{self.metric}-nn{self.n_neighbors}-md{self.min_dist:g}-seed{self.seed}"


def umap_dir(cache: Cache, out: Path | None) -> Path:
    return (Path(out) / cache.dataset if out else Path(cache.path).parent) / "umap"


def compute_coords(cache: Cache, cfg: UmapConfig, out: Path | None = None) -> tuple[np.ndarray, Path]:
    """2-D coordinates for ``cache`` (read back if this configuration was computed before)."""
    path = umap_dir(cache, out) / f"{cache.model}.{cfg.tag()}.npz"
    if path.is_file():
        saved = np.load(path, allow_pickle=False)
        if str(saved["cache_key"]) == cache.cache_key:
            return saved["coords"], path
    n = len(cache.relpaths)
    if n <= cfg.n_neighbors:
        raise VlmprobeError(f"{cache.path}: {n} images, but n_neighbors={cfg.n_neighbors}; "
                            "pass a smaller --n-neighbors.")
    import umap  # umap-learn; imported late, numba compilation is slow

    # With random_state set umap-learn runs single-threaded, which makes the map reproducible.
    reducer = umap.UMAP(n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, metric=cfg.metric,
                        random_state=cfg.seed, n_components=2, n_jobs=1)
    coords = reducer.fit_transform(cache.embeddings).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, coords=coords, relpaths=np.array(cache.relpaths), cache_key=cache.cache_key,
             config=json.dumps(asdict(cfg)))
    return coords, path


def _scatter(ax, coords, values: list[str], title: str) -> None:
    names = sorted(set(values))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        sel = np.array([v == name for v in values])
        ax.scatter(coords[sel, 0], coords[sel, 1], s=7, alpha=0.8, color=cmap(i % cmap.N),
                   label=f"{name or '(none)'} (n={sel.sum()})", linewidths=0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if len(names) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=2, frameon=False)


def plot_map(cache: Cache, coords: np.ndarray, cfg: UmapConfig, path: Path,
             color_by: list[str] = ()) -> list[Path]:
    """Scatter coloured by class, plus one panel per ``color_by`` metadata column."""
    panels = [("class", [cache.class_names[i] for i in cache.labels])]
    for col in color_by:
        _, names, _ = cache.label_view(col)  # validates the column
        panels.append((col, list(cache.metadata[col])))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
        for ax, (col, values) in zip(axes[0], panels):
            _scatter(ax, coords, values, f"coloured by {col}")
        base = " (null baseline)" if cache.baseline else ""
        fig.suptitle(f"{cache.model}{base} on {cache.dataset} (N={len(coords)})\nUMAP "
                     f"metric={cfg.metric}, n_neighbors={cfg.n_neighbors}, "
                     f"min_dist={cfg.min_dist:g}, seed={cfg.seed}")
        fig.tight_layout()
        meta = provenance(stage="umap", model=cache.model, dataset=cache.dataset,
                          cache_key=cache.cache_key, umap=asdict(cfg))
        return save_figure(fig, path, meta)


def umap_caches(caches: list[Cache], cfg: UmapConfig = UmapConfig(), out: Path | None = None,
                color_by: list[str] = (), log=print) -> list[Path]:
    """Compute (or reuse) and draw one map per cache; returns the PNG paths."""
    pngs = []
    for cache in caches:
        coords, coords_path = compute_coords(cache, cfg, out)
        cols = [c for c in color_by if c in cache.metadata]
        figure = umap_dir(cache, out) / f"{cache.model}.{cfg.tag()}"
        png = plot_map(cache, coords, cfg, figure, cols)[0]
        log(f"{cache.model} / {cache.dataset}: map {png} (coordinates {coords_path})")
        pngs.append(png)
    return pngs
