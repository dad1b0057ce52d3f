"""Volumes as 2-D samples: NIfTI files (nibabel) and DICOM series (pydicom, one folder = one
series, grouped by SeriesInstanceUID and sorted by position along the slice normal).

Both become one array in the closest RAS orientation (``nibabel.as_closest_canonical``), so
every volume is cut the same way whatever its acquisition: axial slices along the third axis,
inferior to superior, every ``slice_step``-th, each shown as a radiologist reads an axial slice
(anterior up, the patient's right on the image's left: for an axial DICOM series that is each
file's own pixel array). A slice is the sample ``<volume>#axial/<k>``; its metadata group is the
volume, so grouped splits never put two slices of one scan on both sides.

The window comes from the dataset entry (``dicom_window``): "tags" is the series' first file's
WindowCenter/Width (a NIfTI has none: the volume's min-max), "minmax" the volume's min-max,
"C,W" fixed; then as :func:`vlmprobe.data.decode.read_dicom` (linear window, 8-bit RGB or
float). Whole volumes (3-D CT encoders) are read by :func:`load_volume`: the same RAS array in
Hounsfield units with its affine, so the model's own resampling sees the true voxel spacing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..validation import VlmprobeError
from .decode import (AXIAL, MEMBER_SEP, WHOLE, _as_intensity, _series_files, apply_window,
                     fixed_window, minmax_window, require_pydicom, window_tags)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: what installs nibabel (pyproject's ``volumes`` extra)
VOLUMES_EXTRA = "pip install 'vlmprobe[volumes]'"


def volume_pipeline(window: str, intensity: str = "8bit") -> str:
    return (f"volume: NIfTI (nibabel) or DICOM series (sorted by position, per-file rescale) -> "
            f"closest RAS -> axial slice, anterior up -> window {window} (tags: the series' first "
            "file; NIfTI and minmax: the volume's min-max) -> "
            + ("float32 RGB in [0, 1], no 8-bit rounding" if intensity == "float" else "8-bit RGB"))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def require_nibabel(who: Path | str):
    try:
        import nibabel
    except ImportError:
        raise VlmprobeError(f"{who} needs nibabel to read NIfTI, and nibabel is not installed "
                            f"here: {VOLUMES_EXTRA}") from None
    return nibabel


# -- listing --------------------------------------------------------------------------------------
def _axial_count(shape: tuple[int, ...], affine: np.ndarray) -> int:
    """How many axial slices the volume has once in the closest RAS orientation."""
    import nibabel.orientations as orientations

    ornt = orientations.io_orientation(affine)
    return int(shape[int(np.flatnonzero(ornt[:, 0] == 2)[0])])


def _nifti_count(path: Path) -> int:
    nib = require_nibabel(path)
    try:
        img = nib.load(path)
    except Exception as e:  # noqa: BLE001 — nibabel's many ways of saying "not a NIfTI"
        raise VlmprobeError(f"{path} is not a readable NIfTI file ({e}).") from None
    shape = img.shape
    if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
        raise VlmprobeError(f"{path} has shape {shape}; vlmprobe reads 3-D volumes as axial "
                            "slices. Split a 4-D series into 3-D files first.")
    return _axial_count(shape[:3], img.affine)


def _series_headers(folder: Path, files: list[Path]) -> list:
    """The headers of a folder's DICOM files, sorted by position along the slice normal; a
    folder holding two series, or a file without position tags, is an error naming the file."""
    pydicom = require_pydicom(folder)
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 — pydicom's many ways of saying "not DICOM"
            raise VlmprobeError(f"{f} is not a readable DICOM file ({e}).") from None
        missing = [t for t in ("SeriesInstanceUID", "ImagePositionPatient",
                               "ImageOrientationPatient") if t not in ds]
        if missing:
            raise VlmprobeError(f"{f} lacks {', '.join(missing)}, so it cannot be placed in a "
                                f"series; dicom_series reads each folder as one series.")
        headers.append((f, ds))
    uid = headers[0][1].SeriesInstanceUID
    other = next(((f, ds) for f, ds in headers if ds.SeriesInstanceUID != uid), None)
    if other is not None:
        raise VlmprobeError(f"{folder} mixes DICOM series: {other[0]} belongs to series "
                            f"{other[1].SeriesInstanceUID}, {headers[0][0]} to {uid}. Put each "
                            "series in a folder of its own.")
    normal = np.cross(*np.reshape(np.asarray(headers[0][1].ImageOrientationPatient, float), (2, 3)))
    return [ds for _, ds in sorted(headers, key=lambda h: float(
        np.dot(normal, np.asarray(h[1].ImagePositionPatient, float))))]


def _series_affine(headers: list) -> np.ndarray:
    """Voxel (column i, row j, slice k) -> RAS millimetres, from the sorted series' tags."""
    first = headers[0]
    orient = np.asarray(first.ImageOrientationPatient, float)
    row_step, col_step = (float(v) for v in first.get("PixelSpacing", (1.0, 1.0)))
    origin = np.asarray(first.ImagePositionPatient, float)
    if len(headers) > 1:
        step = (np.asarray(headers[-1].ImagePositionPatient, float) - origin) / (len(headers) - 1)
    else:
        step = np.cross(orient[:3], orient[3:]) * float(first.get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = (orient[:3] * col_step, orient[3:] * row_step,
                                                      step, origin)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS (DICOM) -> RAS (NIfTI)


#: what every whole-volume sample goes through before the model's own transform
WHOLE_VOLUME_PIPELINE = ("whole volume: NIfTI (nibabel) or DICOM series (sorted by position, "
                         "evenly spaced, per-file rescale) -> closest RAS, float32 values (HU) "
                         "with the voxel-to-RAS affine -> the 3-D model's own transform")
VOLUME_MODES = ("slices", "whole")


def expand_volumes(entry, root: Path, samples: list) -> list:
    """Each NIfTI sample, and with ``entry.dicom_series`` each folder of .dcm samples, replaced
    by its axial slices (every ``entry.slice_step``-th), grouped by volume; with ``entry.volume``
    "whole", by one sample ``<volume>#volume`` (a 3-D encoder's input)."""
    step = entry.slice_step
    series: dict[str, list] = {}
    out = []
    for s in samples:
        if is_nifti(s.relpath) and MEMBER_SEP not in s.relpath:
            out.append((s.relpath, s, _nifti_count(root / s.relpath)))
        elif entry.dicom_series and s.relpath.lower().endswith(".dcm"):
            folder = s.relpath.rpartition("/")[0]
            if folder not in series:
                out.append((folder, s, None))
            series.setdefault(folder, []).append(s)
        else:
            out.append((None, s, None))
    expanded = []
    for volume, s, n in out:
        if volume is None:
            expanded.append(s)
            continue
        members = series.get(volume, [s])  # a DICOM series' files, or the NIfTI sample
        if len(members) > 1:
            labels = {m.label for m in members}
            if len(labels) > 1:
                odd = next(m for m in members if m.label != s.label)
                raise VlmprobeError(f"{root / volume} is one DICOM series but its files carry "
                                    f"different labels ({s.relpath}: {s.label}, {odd.relpath}: "
                                    f"{odd.label}); a series has one label.")
        if n is None:
            headers = _series_headers(root / volume, [root / m.relpath for m in members])
            if entry.volume == "whole":
                check_slice_gaps(root / volume, headers)
            n = _axial_count((int(headers[0].Columns), int(headers[0].Rows), len(headers)),
                             _series_affine(headers))
        if entry.volume == "whole":
            expanded.append(replace(s, relpath=f"{volume}{MEMBER_SEP}{WHOLE}"))
            continue
        group = s.metadata.get("group") or volume
        expanded += [replace(s, relpath=f"{volume}{MEMBER_SEP}{AXIAL}/{k}",
                             metadata={**s.metadata, "group": group}) for k in range(0, n, step)]
    return expanded


def slice_gaps(headers: list) -> np.ndarray:
    """Distances (mm) between consecutive slices of a sorted series, along the slice normal."""
    orient = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(orient[:3], orient[3:])
    return np.diff([float(np.dot(normal, np.asarray(h.ImagePositionPatient, float)))
                    for h in headers])


def check_slice_gaps(folder: Path, headers: list, tolerance: float = 0.01) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing slice, two slices at one
    position, mixed spacings): its affine would stretch the volume silently."""
    gaps = slice_gaps(headers)
    if not len(gaps):
        return
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > tolerance * max(abs(step), 1e-6))
    if len(bad):
        i = int(bad[0])
        raise VlmprobeError(
            f"{folder}: slices are not evenly spaced: {Path(headers[i].filename).name} -> "
            f"{Path(headers[i + 1].filename).name} is {gaps[i]:.3g} mm apart, the series' step is "
            f"{step:.3g} mm ({len(bad)} uneven gap(s)); a slice is missing or the folder mixes "
            "spacings. Export the complete series, one spacing per folder.")


def volume_geometry(path: Path) -> dict:
    """What ``datasets check`` reports of a volume, from its headers only: voxels, spacing (mm),
    the stored orientation (nibabel axis codes, e.g. LPS) and, for a DICOM series, the smallest
    and largest gap between consecutive slices."""
    import nibabel.orientations as orientations

    nib = require_nibabel(path)
    if path.is_dir():
        headers = _series_headers(path, _series_files(path))
        affine = _series_affine(headers)
        shape = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
        gaps = slice_gaps(headers)
        gap_range = (float(gaps.min()), float(gaps.max())) if len(gaps) else None
    else:
        img = nib.load(path)
        affine, shape, gap_range = img.affine, tuple(int(n) for n in img.shape[:3]), None
    return {"shape": shape, "spacing": tuple(float(v) for v in
                                             np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)),
            "orientation": "".join(orientations.aff2axcodes(affine)), "slice_gaps": gap_range}


@dataclass(frozen=True)
class Volume:
    """A whole volume as a 3-D encoder reads it: float32 values (Hounsfield units for CT) in
    the closest RAS orientation, and the voxel -> RAS millimetre affine."""

    array: np.ndarray
    affine: np.ndarray
    source: str

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def middle_slice(self) -> Image.Image:
        """The middle axial slice, min-max windowed to 8-bit grey (what duplicate checks hash)."""
        plane = self.array[::-1, ::-1, self.array.shape[2] // 2].T
        return Image.fromarray(np.round(apply_window(plane, *minmax_window(plane)) * 255)
                               .astype(np.uint8))


def _canonical_image(path: Path):
    """(nibabel image in the closest RAS orientation, the series' first window tags or None,
    whether it is MONOCHROME1), from a NIfTI file or a DICOM series folder."""
    nib = require_nibabel(path)
    if path.is_dir():
        pydicom = require_pydicom(path)
        from pydicom.pixels import apply_rescale

        headers = _series_headers(path, _series_files(path))
        check_slice_gaps(path, headers)
        planes = [apply_rescale(pydicom.dcmread(h.filename).pixel_array, h).astype(np.float32).T
                  for h in headers]
        tags = window_tags(headers[0])
        inverted = headers[0].get("PhotometricInterpretation", "") == "MONOCHROME1"
        img = nib.Nifti1Image(np.stack(planes, axis=2), _series_affine(headers))
    else:
        try:
            img = nib.load(path)
        except Exception as e:  # noqa: BLE001 — nibabel's many ways of saying "not a NIfTI"
            raise VlmprobeError(f"{path} is not a readable NIfTI file ({e}).") from None
        tags, inverted = None, False
        if img.ndim == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if img.ndim != 3:
            raise VlmprobeError(f"{path} has shape {img.shape}, not a 3-D volume. Split a 4-D "
                                "series into 3-D files first.")
    return nib.as_closest_canonical(img), tags, inverted


# -- reading --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, bool]:
    """(float32 volume in the closest RAS orientation, the series' first window tags or None,
    whether it is MONOCHROME1). Kept for the next slice: workers read a volume's slices one
    after another."""
    img, tags, inverted = _canonical_image(path)
    return np.asarray(img.get_fdata(dtype=np.float32)), tags, inverted


def load_volume(path: Path) -> Volume:
    """The whole volume at ``path`` (NIfTI file or DICOM series folder) for a 3-D encoder."""
    img, _, _ = _canonical_image(Path(path))
    return Volume(np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, float),
                  str(path))


def read_slice(root: Path, relpath: str, window: str = "tags", intensity: str = "8bit"):
    """Axial slice ``k`` of ``<volume>#axial/<k>``, windowed, as 8-bit RGB (or float RGB)."""
    volume, _, member = relpath.partition(MEMBER_SEP)
    k = int(member.removeprefix(f"{AXIAL}/"))
    data, tags, inverted = read_volume(root / volume)
    if not 0 <= k < data.shape[2]:
        raise VlmprobeError(f"{root / volume} has {data.shape[2]} axial slices, not slice {k}: "
                            "the volume changed since it was listed.")
    plane = data[::-1, ::-1, k].T  # rows anterior -> posterior, columns patient right -> left
    centre, width = (fixed_window(window) or (tags if window == "tags" else None)
                     or minmax_window(data))
    y = apply_window(plane, centre, width)
    return _as_intensity(1 - y if inverted else y, intensity)
