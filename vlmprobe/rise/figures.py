"""RISE figures in original-image coordinates: per-image panels and the overview grid (rows per
class), lesion contours and text boxes drawn on every panel, unseen pixels hatched."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..figures import save_figure, styled
from ..validation import VlmprobeError

_RISE_STYLE = {"savefig.dpi": 150, "hatch.color": "0.35"}


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return image if image.ndim == 2 else image[..., :3].mean(-1)


def _outline(ax, row: dict) -> None:
    """Lesion contour and text boxes, drawn the same on every panel of an image."""
    if row.get("mask") is not None:
        ax.contour(np.asarray(row["mask"], dtype=float), levels=[0.5], colors="#00e5ff",
                   linewidths=1.2)
    for x0, y0, x1, y1 in row.get("text_boxes") or ():
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="#ffd400", linestyle="--", linewidth=1.2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)


def _overlay(ax, image: np.ndarray, sal: np.ndarray):
    """Saliency over the grayscale image (own min..max); NaN (never seen) hatched grey."""
    if sal.shape != image.shape[:2]:
        raise VlmprobeError(f"saliency {sal.shape} and image {image.shape[:2]} differ; draw maps "
                            "in original-image coordinates (InputGeometry.to_original).")
    ax.imshow(_gray(image), cmap="gray", vmin=0, vmax=255)
    finite = sal[np.isfinite(sal)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(sal), cmap="inferno", alpha=0.6, vmin=lo,
                   vmax=hi if hi > lo else lo + 1e-12)
    unseen = ~np.isfinite(sal)
    if unseen.any():
        ax.imshow(np.ma.masked_where(~unseen, np.ones_like(sal)), cmap="Greys", vmin=0, vmax=2.5,
                  alpha=0.7)
        ax.contourf(unseen.astype(float), levels=[0.5, 1.5], colors="none", hatches=["////"])
    return im


def _legend(fig, rows: Sequence[dict]) -> None:
    handles = [Line2D([], [], color="#00e5ff", lw=1.2, label="lesion mask"),
               Line2D([], [], color="#ffd400", lw=1.2, ls="--", label="text box"),
               Patch(facecolor="0.75", hatch="////", edgecolor="0.35",
                     label="not seen by the model")]
    present = [any(r.get("mask") is not None for r in rows),
               any(r.get("text_boxes") for r in rows),
               any(not np.isfinite(np.asarray(m["saliency"], float)).all()
                   for r in rows for m in r["maps"])]
    if any(present):
        fig.legend(handles=[h for h, p in zip(handles, present) if p],
                   loc="outside lower center", ncol=3, frameon=False)


def _stem(path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".png", ".svg") else path


def plot_rise_panels(rows: Sequence[dict], path: str | Path, title: str,
                     metadata: dict | None = None) -> list[Path]:
    """One row per image: the image, then each of its maps over the grayscale image, all in
    original-image coordinates, so lesion mask and text boxes line up with what was scored.

    Row keys: ``image`` (uint8 [h, w] or [h, w, 3]), ``maps`` (list of dicts with ``saliency``,
    float [h, w], NaN where the model never saw the image: drawn hatched grey; ``title``;
    ``cbar_label``), ``caption``; optional ``mask`` (bool [h, w], cyan contour) and
    ``text_boxes`` ([(x0, y0, x1, y1)], end-exclusive pixel bounds, dashed yellow). Writes
    ``<path>.png`` (``metadata`` as JSON in its Description) and ``<path>.svg``.
    """
    if not rows:
        raise VlmprobeError("plot_rise_panels needs at least one row.")
    n_cols = 1 + max(len(r["maps"]) for r in rows)
    with styled(_RISE_STYLE):
        fig = Figure(figsize=(3.2 * n_cols, 3.1 * len(rows) + 0.5), layout="constrained")
        for sub, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
            image = np.asarray(row["image"])
            axes = sub.subplots(1, n_cols, squeeze=False)[0]
            axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)  # uint8: no contrast stretch
            axes[0].set_title("image")
            for ax, m in zip(axes[1:], row["maps"]):
                im = _overlay(ax, image, np.asarray(m["saliency"], dtype=float))
                ax.set_title(m.get("title", "RISE saliency"))
                sub.colorbar(im, ax=ax, shrink=0.85, label=m.get("cbar_label", "saliency"))
            for ax in axes[:1 + len(row["maps"])]:
                _outline(ax, row)
            for ax in axes[1 + len(row["maps"]):]:
                ax.set_visible(False)
            sub.suptitle(row["caption"], fontsize=9)
        _legend(fig, rows)
        fig.suptitle(title, fontsize=10, fontweight="bold")
        return save_figure(fig, _stem(path), metadata)


def plot_rise_grid(rows_by_class: dict[str, Sequence[dict]], path: str | Path, title: str,
                   metadata: dict | None = None) -> list[Path]:
    """Overview of many images: one row per class, one column per image, the first map of
    each row dict (see :func:`plot_rise_panels`) over its image, each on its own colour scale."""
    classes = [c for c, rows in rows_by_class.items() if rows]
    if not classes:
        raise VlmprobeError("plot_rise_grid needs at least one image.")
    n_cols = max(len(rows_by_class[c]) for c in classes)
    all_rows = [r for c in classes for r in rows_by_class[c]]
    with styled(_RISE_STYLE):
        fig = Figure(layout="constrained", figsize=(2.4 * n_cols + 0.6, 2.3 * len(classes) + 0.8))
        axes = fig.subplots(len(classes), n_cols, squeeze=False)
        for r, c in enumerate(classes):
            for k, ax in enumerate(axes[r]):
                if k >= len(rows_by_class[c]):
                    ax.set_visible(False)
                    continue
                row = rows_by_class[c][k]
                im = _overlay(ax, np.asarray(row["image"]), np.asarray(row["maps"][0]["saliency"],
                                                                      dtype=float))
                _outline(ax, row)
                ax.set_title(row.get("short_caption", ""), fontsize=7)
                if k == 0:
                    ax.set_ylabel(c, fontsize=9, fontweight="bold")
        fig.colorbar(im, ax=axes, shrink=0.6, ticks=[],
                     label="saliency, low → high (each image on its own scale)")
        _legend(fig, all_rows)
        fig.suptitle(title, fontsize=10, fontweight="bold")
        return save_figure(fig, _stem(path), metadata)
