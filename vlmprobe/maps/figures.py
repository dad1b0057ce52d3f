"""UMAP figures: one map, the grid, models side by side, example images beside their points.

**Large N.** Marker area and opacity fall with the number of points (:func:`point_style`), so
hundreds of points read as dots and 30k points (HiCervix, ISIC) as densities rather than a blot;
above ``RASTER_ABOVE`` points the scatter is rasterized inside the SVG (text, axes and legend stay
vector), so a 30k-point SVG stays small. Points are drawn in one seeded random order, not class
after class, so the last class drawn does not hide the others.

**Thumbnails** (``--thumbnails K``): K images chosen with the seed, classes taking turns, each
placed on a ring around the map in the angular order of its point and joined to it by a line in
its class colour (the paper's Figures 1a/2a). Images are read from the dataset root the cache was
extracted from (``--root`` overrides it); when they cannot be found a warning names the path and
the figure is drawn without them.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from PIL import Image

from ..cache import Cache
from ..data import MEMBER_SEP, images_root, read_image, read_sample, sample_file
from ..data.volumes import Volume
from ..figures import save_figure, styled
from ..provenance import provenance
from .config import seed_text

RASTER_ABOVE = 2000  # points; above this the scatter is a bitmap inside the SVG
THUMB_PX = 96  # longest side of a thumbnail as read; drawn at THUMB_PT points
THUMB_PT = 34
COMPARE_COLUMNS = 4  # panels per row of a side-by-side figure: 14 models wrap into 4 rows


def point_style(n: int) -> tuple[float, float]:
    """Marker area (pt²) and alpha for ``n`` points: 8 and 0.9 up to a few hundred points,
    ≈ 0.9 and 0.35 at 30k, so overlaps show density."""
    size = float(np.clip(8.0 * np.sqrt(400.0 / n), 0.5, 8.0))
    alpha = float(np.clip(0.9 * (2000.0 / n) ** 0.35, 0.3, 0.9))
    return size, alpha


def values(cache: Cache, column: str | None) -> list[str]:
    """Each point's class name, or its value in metadata ``column`` (validated by the cache)."""
    index, names, _ = cache.label_view(column)
    return [names[i] for i in index]


def palette(names: list[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def scatter(ax, coords: np.ndarray, vals: list[str], title: str, legend: bool = True,
            seed: int = 0) -> list[Line2D]:
    """One map on ``ax``; returns legend handles (name and count per value)."""
    names = sorted(set(vals))
    colours = palette(names)
    size, alpha = point_style(len(coords))
    order = np.random.default_rng(seed).permutation(len(coords))
    rgba = np.array([colours[v] for v in vals])
    ax.scatter(coords[order, 0], coords[order, 1], s=size, alpha=alpha, c=rgba[order],
               linewidths=0, rasterized=len(coords) > RASTER_ABOVE)
    counts = Counter(vals)
    handles = [Line2D([], [], ls="", marker="o", ms=5, color=colours[n],
                      label=f"{n or '(none)'} (n={counts[n]})") for n in names]
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if legend and len(names) <= 20:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return handles


def stratified_choice(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices, classes taking turns, each class in a seeded random order."""
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(k, len(labels)):
        for q in queues:
            if q and len(picked) < k:
                picked.append(int(q.pop(0)))
    return np.array(picked, dtype=np.int64)


def read_thumbnails(cache: Cache, indices, root: Path | None = None,
                    px: int = THUMB_PX) -> dict[int, Image.Image]:
    """Thumbnails (longest side ``px``) of these samples, by index; those that cannot be read are
    left out with one warning that names the folder searched and how to point at the images.
    An imported cache (``vlmprobe cache import``) has no images: none, and no warning."""
    if cache.imported:
        return {}
    folder = images_root(cache, root)
    dicom = cache.dicom_window
    out, missing = {}, []
    for i in indices:
        rel = cache.relpaths[i]
        try:  # a JPEG decodes at a reduced DCT scale: 2,000 ISIC-sized images in seconds
            image = (read_sample(folder, rel, dicom) if MEMBER_SEP in rel
                     else read_image(folder / rel, dicom, draft=px))
        except Exception:  # noqa: BLE001 - a missing or unreadable image costs its thumbnail only
            missing.append(str(folder / sample_file(rel)))
            continue
        if isinstance(image, Volume):  # a whole volume: its middle axial slice
            image = image.middle_slice().convert("RGB")
        image.thumbnail((px, px))
        out[int(i)] = image
    if missing:
        hint = cache.dataset_root
        gone = (f" (the cache was extracted from {hint}, which is not there)"
                if root is None and hint and not Path(hint).is_dir() else "")
        warnings.warn(f"{cache.path}: {len(missing)} of {len(indices)} images to show could not "
                      f"be read under {folder}{gone} (e.g. {missing[0]}); they are left out. Pass "
                      "--root with the dataset folder the cache was extracted from (or set "
                      "VLMPROBE_DATA).", stacklevel=2)
    return out


def add_thumbnails(ax, coords: np.ndarray, images: dict[int, Image.Image],
                   colours: dict[int, tuple]) -> None:
    """Each image on a ring around the map, in the angular order of its point, with a line to it."""
    if not images:
        return
    idx = np.array(list(images))
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    rel = (coords[idx] - (lo + hi) / 2) / np.where(hi > lo, hi - lo, 1)
    angle = np.arctan2(rel[:, 1], rel[:, 0])
    order = np.argsort(angle)
    for slot, j in enumerate(order):
        a = angle[order[0]] + 2 * np.pi * slot / len(idx)
        i = int(idx[j])
        image = images[i]
        box = OffsetImage(np.asarray(image), zoom=THUMB_PT / max(image.size))
        ax.add_artist(AnnotationBbox(
            box, coords[i], xybox=(0.5 + 0.64 * np.cos(a), 0.5 + 0.64 * np.sin(a)),
            boxcoords="axes fraction", pad=0.1, annotation_clip=False,
            bboxprops={"edgecolor": colours[i], "linewidth": 1.2},
            arrowprops={"arrowstyle": "-", "color": colours[i], "linewidth": 0.7,
                        "shrinkA": 0, "shrinkB": 1}))


def _panel_thumbnails(ax, coords, vals, images) -> None:
    colours = palette(sorted(set(vals)))
    add_thumbnails(ax, coords, images, {i: colours[vals[i]] for i in images})


def _metrics_text(s: dict) -> str:
    return (f"trustworthiness {s['trustworthiness']:.3f}, kNN kept {s['knn_preservation']:.2f}\n"
            f"class silhouette {s['silhouette_2d']:.2f}, class kNN accuracy {s['knn_acc_2d']:.2f}")


def _legend(fig, handles, title: str, right: float = 1.0) -> None:
    if len(handles) <= 20:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(right, 0.95),
                   frameon=False, title=title)


def _model(cache: Cache) -> str:
    return cache.model + (" (null baseline)" if cache.baseline else "")


def plot_map(cache: Cache, coords: np.ndarray, cfg, path: Path, color_by: list[str] = (),
             images: dict[int, Image.Image] | None = None) -> list[Path]:
    """Scatter coloured by class, plus one panel per ``color_by`` metadata column."""
    images = images or {}
    panels = [("class", values(cache, None))] + [(col, values(cache, col)) for col in color_by]
    grow = 1.6 if images else 1.0  # room for the ring of thumbnails
    with styled():
        fig = Figure(figsize=(5.2 * grow * len(panels), 4.2 * grow))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, (col, vals) in zip(axes[0], panels):
            handles = scatter(ax, coords, vals, f"coloured by {col}", legend=not images,
                              seed=cfg.seed)
            _panel_thumbnails(ax, coords, vals, images)
            if images and len(handles) <= 20:
                ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.25, 1.0),
                          frameon=False)
        fig.suptitle(f"{_model(cache)} on {cache.dataset} (N={len(coords)})\nUMAP "
                     f"metric={cfg.metric}, n_neighbors={cfg.n_neighbors}, "
                     f"min_dist={cfg.min_dist:g}, {seed_text(cfg)}")
        fig.tight_layout()
        meta = provenance(stage="umap", model=cache.model, dataset=cache.dataset,
                          cache_key=cache.cache_key, umap=asdict(cfg),
                          thumbnails=[cache.relpaths[i] for i in images])
        return save_figure(fig, path, meta)


def plot_grid(cache: Cache, grid, coords: list[np.ndarray], scores: list[dict], path: Path,
              column: str | None = None) -> list[Path]:
    """Rows n_neighbors, columns min_dist, each panel with its metrics: the grid at a glance."""
    vals = values(cache, column)
    rows, cols = len(grid.n_neighbors), len(grid.min_dist)
    with styled():
        fig = Figure(figsize=(3.0 * cols + 2.0, 3.0 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, cfg, c, s in zip(axes.flat, grid.configs(), coords, scores):
            handles = scatter(ax, c, vals, f"n_neighbors={cfg.n_neighbors}, "
                              f"min_dist={cfg.min_dist:g}", legend=False, seed=grid.seed)
            ax.set_ylabel("")
            ax.set_xlabel(_metrics_text(s), fontsize=8)
        _legend(fig, handles, column or "class")
        s = scores[0]
        fig.suptitle(f"{_model(cache)} on {cache.dataset} (N={len(vals)}), UMAP "
                     f"metric={grid.metric}, {seed_text(grid)}, coloured by {column or 'class'}\n"
                     f"class labels' metrics at k={s['k']}; original space: silhouette "
                     f"{s['silhouette_orig']:.2f}, kNN accuracy {s['knn_acc_orig']:.2f}")
        fig.tight_layout()
        meta = provenance(stage="umap", model=cache.model, dataset=cache.dataset,
                          cache_key=cache.cache_key, grid=asdict(grid), metrics=scores)
        return save_figure(fig, path, meta)


def plot_compare(caches: list[Cache], coords: list[np.ndarray], scores: list[dict], cfg,
                 path: Path, column: str | None = None,
                 images: dict[int, Image.Image] | None = None) -> list[Path]:
    """Models side by side on one dataset and configuration (the paper's Figure 3): one panel per
    cache (rows of ``COMPARE_COLUMNS``), the same colours and legend, each panel titled with its
    model and metrics."""
    images = images or {}
    vals = values(caches[0], column)  # same relpaths, so the same labels in every panel
    grow = 1.45 if images else 1.0
    cols = min(len(caches), COMPARE_COLUMNS)
    rows = -(-len(caches) // cols)
    with styled():
        fig = Figure(figsize=(3.6 * grow * cols + 2.0, 3.9 * grow * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat[len(caches):]:
            ax.set_axis_off()
        for ax, cache, c, s in zip(axes.flat, caches, coords, scores):
            handles = scatter(ax, c, vals, _model(cache), legend=False, seed=cfg.seed)
            ax.set_ylabel("")
            ax.set_xlabel(_metrics_text(s), fontsize=8)
            _panel_thumbnails(ax, c, vals, images)
        _legend(fig, handles, column or "class", right=1.02 if images else 1.0)
        first = caches[0]
        fig.suptitle(f"{first.dataset} (N={len(vals)}), UMAP metric={cfg.metric}, n_neighbors="
                     f"{cfg.n_neighbors}, min_dist={cfg.min_dist:g}, {seed_text(cfg)}, "
                     f"coloured by {column or 'class'}")
        fig.tight_layout()
        meta = provenance(stage="umap", dataset=first.dataset, umap=asdict(cfg),
                          models=[c.model for c in caches],
                          cache_keys=[c.cache_key for c in caches], metrics=scores)
        return save_figure(fig, path, meta)
