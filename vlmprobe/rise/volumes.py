"""RISE on volumes: the same estimator with s x s x s masks (:func:`rise_saliency` on a
[C, X, Y, Z] input), maps saved as NIfTI in the model input's RAS grid and drawn as orthogonal
slices through the lesion.

With Merlin's towers every mask costs a full 224 x 224 x 160 forward (≈ 35-45 s on 2 CPU cores), so
4,096 masks are days on a CPU and minutes on a GPU; the estimator is tested on CPU with a small
stand-in encoder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..data.volume_qc import orthogonal_slices
from ..data.volumes import require_nibabel
from .saliency import RiseResult


def save_volume_map(result: RiseResult, affine, path: str | Path, target: int) -> Path:
    """The centred map of class ``target`` as a float32 NIfTI placed by ``affine`` (the model
    input's voxel -> RAS mm, e.g. the transformed MetaTensor's), so any viewer overlays it on
    the volume the model saw."""
    nib = require_nibabel(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(result.centred()[target], np.asarray(affine, float)), path)
    return path


def volume_map_figure(volume: np.ndarray, result: RiseResult, spacing, target: int,
                      point=None, title: str = "") -> Figure:
    """Orthogonal slices of the model's input through ``point`` (e.g. the lesion), the centred
    map of class ``target`` drawn over them (positive: keeping the voxel raises the score)."""
    fig = orthogonal_slices(volume, spacing, point, title, marker=point)
    saliency = result.centred()[target]
    limit = float(np.abs(saliency).max()) or 1.0
    shape = np.asarray(volume.shape)
    i, j, k = (shape // 2 if point is None else
               np.clip(np.round(point).astype(int), 0, shape - 1))
    planes = (saliency[::-1, ::-1, k].T, saliency[::-1, j, ::-1].T, saliency[i, :, ::-1].T)
    for ax, plane in zip(fig.axes, planes):
        ax.imshow(plane, cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.45,
                  aspect=ax.get_aspect(), interpolation="nearest")
    return fig
