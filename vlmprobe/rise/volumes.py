"""RISE on volumes: the same estimator with s x s x s masks (:func:`rise_saliency` on a
[C, X, Y, Z] input), maps saved as NIfTI in the model input's RAS grid and drawn as orthogonal
slices through the lesion.

With Merlin's towers every mask costs a full 224 x 224 x 160 forward (≈ 12-45 s on 2 CPU cores),
so 4,096 masks are days on a CPU and minutes on a GPU; the estimator is tested on CPU with small
3-D encoders.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..cache.chunks import write_atomic
from ..data.volume_qc import draw_orthogonal_slices, slice_planes
from ..data.volumes import require_nibabel
from ..figures import save_figure, styled
from ..validation import VlmprobeError
from .saliency import RiseResult


def write_volume_map(saliency: np.ndarray, affine, path: str | Path) -> Path:
    """A map [X, Y, Z] as a float32 NIfTI placed by ``affine`` (the model input's voxel -> RAS
    mm, e.g. the transformed MetaTensor's), so any viewer overlays it on the volume the model
    saw; written beside and renamed, like every output."""
    nib = require_nibabel(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = nib.Nifti1Image(np.asarray(saliency, np.float32), np.asarray(affine, float)).to_bytes()
    write_atomic(path, gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def save_volume_map(result: RiseResult, affine, path: str | Path, target: int) -> Path:
    """The centred map of class ``target`` as NIfTI (:func:`write_volume_map`)."""
    return write_volume_map(result.centred()[target], affine, path)


def draw_volume_map(axes, volume: np.ndarray, saliency: np.ndarray, spacing, point=None,
                    mask: np.ndarray | None = None) -> object:
    """On three axes: orthogonal slices of the model's input through ``point``, the map drawn
    over them on a symmetric scale (red: keeping the voxel raises the score), the lesion
    ``mask``'s outline in cyan. Returns the last overlay (for a colour bar)."""
    draw_orthogonal_slices(axes, volume, spacing, point, marker=point)
    limit = float(np.nanmax(np.abs(saliency))) or 1.0
    planes = [p for _, p in slice_planes(saliency, point)]
    outlines = [p for _, p in slice_planes(mask, point)] if mask is not None else [None] * 3
    for ax, plane, outline in zip(axes, planes, outlines):
        overlay = ax.imshow(plane, cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.45,
                            aspect=ax.get_aspect(), interpolation="nearest")
        if outline is not None and outline.any():
            ax.contour(outline.astype(float), levels=[0.5], colors="#00e5ff", linewidths=1.0)
    return overlay


def volume_map_figure(volume: np.ndarray, result: RiseResult, spacing, target: int,
                      point=None, title: str = "") -> Figure:
    """Orthogonal slices of the model's input through ``point`` (e.g. the lesion), the centred
    map of class ``target`` drawn over them (positive: keeping the voxel raises the score)."""
    with styled():
        fig = Figure(figsize=(9, 3.4))
        draw_volume_map(fig.subplots(1, 3), volume, result.centred()[target], spacing, point)
        if title:
            fig.suptitle(title)
    return fig


def plot_volume_rise(rows: Sequence[dict], path: str | Path, title: str,
                     metadata: dict | None = None) -> list[Path]:
    """One row per map: ``volume`` (the model's input [X, Y, Z] in [0, 1]), ``saliency``
    ([X, Y, Z]), ``spacing``, ``point`` (the voxel the slices cross: the lesion, else the map's
    maximum), optional ``mask`` (bool [X, Y, Z]) and ``caption``. Writes ``<path>.png`` (with
    ``metadata``) and ``<path>.svg``."""
    if not rows:
        raise VlmprobeError("plot_volume_rise needs at least one row.")
    with styled({"savefig.dpi": 150}):
        fig = Figure(figsize=(9.6, 3.0 * len(rows) + 0.6), layout="constrained")
        for sub, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
            axes = sub.subplots(1, 3)
            overlay = draw_volume_map(axes, row["volume"], row["saliency"], row["spacing"],
                                      row.get("point"), row.get("mask"))
            sub.colorbar(overlay, ax=list(axes), shrink=0.8, ticks=[],
                         label="centred RISE, − → +")
            sub.suptitle(row.get("caption", ""), fontsize=9)
        fig.suptitle(title, fontsize=10, fontweight="bold")
        return save_figure(fig, Path(path), metadata)
