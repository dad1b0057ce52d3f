"""What a 3-D encoder actually sees: a volume after the model's own transform, as orthogonal
slices (axial, coronal, sagittal) through a chosen point, e.g. the lesion.

A volume that arrives flipped, cropped away or windowed to black looks fine on disk and wrong
here, before any embedding is trusted. Axial slices are drawn as a radiologist reads them
(anterior up, the patient's right on the image's left), coronal and sagittal superior up; every
panel keeps the voxel spacing's aspect.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..figures import save_figure, styled
from ..validation import VlmprobeError


def orthogonal_slices(volume: np.ndarray, spacing, point=None, title: str = "",
                      marker=None) -> Figure:
    """Axial, coronal and sagittal slices of ``volume`` [X, Y, Z] (RAS voxel order, values in
    [0, 1]) through voxel ``point`` (default the centre); ``marker``: a voxel drawn as a cross."""
    with styled():
        fig = Figure(figsize=(9, 3.4))
        draw_orthogonal_slices(fig.subplots(1, 3), volume, spacing, point, marker)
        if title:
            fig.suptitle(title)
    return fig


def slice_planes(volume: np.ndarray, point=None) -> list[tuple[str, np.ndarray]]:
    """(name, plane) of the axial, coronal and sagittal slices through voxel ``point`` (default
    the centre), oriented as drawn: axial rows A->P and columns R->L, coronal and sagittal S->I."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise VlmprobeError(f"orthogonal slices take a 3-D volume [X, Y, Z], got shape "
                            f"{volume.shape}.")
    shape = np.asarray(volume.shape)
    i, j, k = (shape // 2 if point is None else
               np.clip(np.round(point).astype(int), 0, shape - 1))
    return [(f"axial z={k}", volume[::-1, ::-1, k].T), (f"coronal y={j}", volume[::-1, j, ::-1].T),
            (f"sagittal x={i}", volume[i, :, ::-1].T)]  # sagittal columns P->A


def draw_orthogonal_slices(axes, volume: np.ndarray, spacing, point=None, marker=None) -> None:
    """:func:`orthogonal_slices` drawn on three given axes, each keeping the spacing's aspect."""
    sx, sy, sz = spacing
    shape = np.asarray(np.shape(volume))
    x, y, z = (shape - 1 - np.asarray(marker, float)) if marker is not None else (None,) * 3
    aspects = (sy / sx, sz / sx, sz / sy)
    where = ((x, y), (x, z), (None if marker is None else marker[1], z))  # (column, row)
    for ax, (name, plane), aspect, (col, row) in zip(axes, slice_planes(volume, point), aspects,
                                                     where):
        ax.imshow(plane, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
        if marker is not None:
            ax.plot([col], [row], marker="+", color="red", markersize=12, mew=1.5)


def voxel_of(affine, ras_mm) -> np.ndarray:
    """The (fractional) voxel at RAS millimetres ``ras_mm`` of a grid placed by ``affine``."""
    return (np.linalg.inv(np.asarray(affine, float)) @ [*ras_mm, 1.0])[:3]


def volume_qc(model: str, dataset: str, root=None, out: str | Path = "qc", n: int = 3,
              **dataset_options) -> list[Path]:
    """Orthogonal slices of the first ``n`` volumes of ``dataset`` after ``model``'s transform
    (no weights loaded), through the lesion where the manifest gives one (``lesion_x_mm`` ...),
    else the centre; ``<out>/<dataset>.<model>.qc<k>.png/.svg`` with provenance."""
    from ..encoders import FAMILIES
    from ..provenance import provenance
    from ..registry import get_model_entry
    from .dataset import load_dataset

    entry = get_model_entry(model)
    if not entry.preprocess.is_volume:
        raise VlmprobeError(f"Model {model!r} reads 2-D images; the volume QC figure is for 3-D "
                            "encoders (merlin, astra).")
    transform = FAMILIES[entry.family](entry)._build_transform()
    data = load_dataset(dataset, root, **dataset_options)
    written = []
    for idx, sample in enumerate(data.samples[:n]):
        seen = transform.meta(data.load_image(idx))
        lesion = [sample.metadata.get(f"lesion_{a}_mm", "") for a in "xyz"]
        point = None
        if all(lesion):
            point = voxel_of(seen.affine, [float(v) for v in lesion])
        seen = seen.as_tensor()[0].numpy()
        fig = orthogonal_slices(seen, entry.preprocess.spacing, point,
                                f"{sample.relpath}: what {model} sees "
                                f"({data.class_names[sample.label]})", marker=point)
        stem = Path(out) / f"{data.entry.name}.{model}.qc{idx}"
        written += save_figure(fig, stem, provenance(stage="volume_qc", model=model,
                                                     dataset=data.entry.name,
                                                     relpath=sample.relpath,
                                                     transform=repr(transform)))
    return written
