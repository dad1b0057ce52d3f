"""ct3d: seeded abdominal CT volumes in Hounsfield units, for 3-D encoders (whole volumes).

Each volume is a body ellipse (fat rim, soft tissue), a liver, two kidneys and a spine, drawn in
millimetres; the ``lesion`` class adds a sphere of :data:`LESION_HU` (hypodense) and 8-14 mm
radius inside the liver. A scanner-site nuisance correlated with the label (``r``, as the other
phantoms' site mark) changes the noise and the reconstruction kernel: site A smooth (8 HU,
Gaussian-filtered), site B sharp (25 HU, white). Volumes alternate between a NIfTI file stored in
LPS voxel order and an axial DICOM series (16-bit signed HU, one folder per series), so both
readers and the orientation handling are exercised; each has a lesion mask (NIfTI, RAS) in
``masks/`` and a manifest row (site, format, lesion centre in RAS mm, radius).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...messages import progress_bar
from ..decode import require_pydicom
from ..volumes import require_nibabel
from .common import MIN_PER_CLASS, class_labels, proportional_counts, write_manifest
from .ctdicom import _ct_dicom
from .study import _sites

#: voxels (x, y, z) and their spacing in mm: a 307 x 307 x 200 mm field of view
SHAPE = (96, 96, 40)
SPACING = (3.2, 3.2, 5.0)
LESION_HU = -45.0  # a hypodense liver lesion: 55 HU liver -> 10 HU
LESION_RADIUS_MM = (8.0, 14.0)
#: site -> (noise sd in HU, Gaussian kernel sigma in voxels; 0: white noise, a sharp kernel)
SITES = {"A": (8.0, 1.0), "B": (25.0, 0.0)}
CLASSES = ("no_lesion", "lesion")


def affine_lps() -> np.ndarray:
    """Voxel -> RAS mm of the stored (LPS voxel order) volumes: x runs to the patient's left,
    y posterior, z superior, centred on the origin."""
    extent = [(n - 1) * s / 2 for n, s in zip(SHAPE, SPACING)]
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [extent[0], extent[1], -extent[2]]
    return affine


def _soft(coords, centre, radii, edge_mm: float = 2.0) -> np.ndarray:
    """1 inside the ellipsoid (or elliptic cylinder, radius None on an axis), 0 outside, a
    logistic edge about ``edge_mm`` wide."""
    d = np.zeros(coords[0].shape, np.float32)
    for c, centre_c, r in zip(coords, centre, radii):
        if r is not None:
            d += ((c - centre_c) / r) ** 2
    from scipy.special import expit

    scale = min(r for r in radii if r is not None)
    return expit((1 - np.sqrt(d)) * scale / edge_mm).astype(np.float32)


def ct3d_volume(rng, lesion: bool, site: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(HU volume and lesion mask in LPS voxel order, the lesion's facts)."""
    from scipy.ndimage import gaussian_filter

    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    a = affine_lps()
    coords = [sum(a[i, j] * grid[j] for j in range(3)) + a[i, 3] for i in range(3)]  # RAS mm
    jitter = rng.uniform(-6, 6, 2)
    hu = np.full(SHAPE, -1000.0, np.float32)

    def put(value, centre, radii):
        nonlocal hu
        w = _soft(coords, centre, radii)
        hu = hu * (1 - w) + value * w

    body_r = (rng.uniform(135, 145), rng.uniform(100, 108))
    put(-90.0, (*jitter, 0), (*body_r, None))  # fat
    put(40.0, (*jitter, 0), (body_r[0] - 15, body_r[1] - 15, None))  # soft tissue
    liver = (jitter[0] + 55, jitter[1] + 10, rng.uniform(-10, 10))  # the patient's right
    liver_r = (65.0, 55.0, 70.0)
    put(55.0, liver, liver_r)
    for side in (-1, 1):
        put(30.0, (jitter[0] + side * 60, jitter[1] - 45, -20), (22, 28, 45))
    put(700.0, (jitter[0], jitter[1] - 70, 0), (16, 16, None))  # spine
    facts = {"lesion_x_mm": "", "lesion_y_mm": "", "lesion_z_mm": "", "lesion_r_mm": ""}
    mask = np.zeros(SHAPE, np.uint8)
    if lesion:
        r = rng.uniform(*LESION_RADIUS_MM)
        centre = tuple(c + rng.uniform(-0.35, 0.35) * lr for c, lr in zip(liver, liver_r))
        w = _soft(coords, centre, (r, r, r), 1.0)
        hu += LESION_HU * w
        mask = (w > 0.5).astype(np.uint8)
        facts = {"lesion_x_mm": round(centre[0], 1), "lesion_y_mm": round(centre[1], 1),
                 "lesion_z_mm": round(centre[2], 1), "lesion_r_mm": round(r, 1)}
    sd, sigma = SITES[site]
    noise = rng.normal(0, 1, SHAPE).astype(np.float32)
    if sigma:
        noise = gaussian_filter(noise, sigma)
        noise /= noise.std()
    body = hu > -500
    hu += sd * noise * body
    return np.round(hu).astype(np.int16), mask, facts


def write_series(folder: Path, hu: np.ndarray, affine: np.ndarray, uid: str) -> None:
    """``hu`` (voxels (i, j, k) placed by ``affine``, columns i, rows j) as an axial DICOM
    series, one 16-bit signed file per slice k, with the position tags a reader sorts by."""
    folder.mkdir(parents=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # RAS -> LPS (DICOM)
    col, row = lps[:3, 0] / SPACING[0], lps[:3, 1] / SPACING[1]
    for k in range(hu.shape[2]):
        _ct_dicom(hu[:, :, k].T.astype(np.float64), 1, folder / f"slice_{k:03d}.dcm",
                  SeriesInstanceUID=uid, ImageOrientationPatient=[*col, *row],
                  ImagePositionPatient=[float(v) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]],
                  PixelSpacing=[SPACING[1], SPACING[0]], SliceThickness=SPACING[2],
                  InstanceNumber=k + 1, SOPInstanceUID=f"{uid}.{k + 1}")


def write_ct3d(out, n, seed, r, progress, _size=None, minimum=MIN_PER_CLASS):
    """CT volumes in ``<class>/ct3d_<i>.nii.gz`` (even i) or ``<class>/ct3d_<i>/`` (an axial
    DICOM series, odd i), classes no_lesion and lesion (a -45 HU sphere, 8-14 mm, in the liver);
    a scanner site (A smooth 8 HU, B sharp 25 HU) follows the label with correlation r; lesion
    masks in ``masks/ct3d_<i>.nii.gz``."""
    nib = require_nibabel("The ct3d phantom")
    require_pydicom("The ct3d phantom")
    counts = proportional_counts(dict.fromkeys(CLASSES, 1), n, minimum)
    labels = class_labels(counts, list(CLASSES))
    sites = _sites(len(CLASSES), labels, r, np.random.default_rng([seed, 3]))
    affine = affine_lps()
    (out / "masks").mkdir()
    rows = []
    with progress_bar("phantom ct3d", n, enabled=progress) as advance:
        for k, (label, site) in enumerate(zip(labels, sites)):
            hu, mask, facts = ct3d_volume(np.random.default_rng([seed, 4, k]), label == 1, site)
            (out / CLASSES[label]).mkdir(exist_ok=True)
            if k % 2 == 0:
                rel, fmt = f"{CLASSES[label]}/ct3d_{k:04d}.nii.gz", "nifti"
                nib.save(nib.Nifti1Image(hu, affine), out / rel)
            else:
                rel, fmt = f"{CLASSES[label]}/ct3d_{k:04d}", "dicom_series"
                write_series(out / rel, hu, affine, f"1.2.826.0.1.3680043.9.7307.{seed}.{k}")
            mask_rel = f"masks/ct3d_{k:04d}.nii.gz"
            nib.save(nib.as_closest_canonical(nib.Nifti1Image(mask, affine)), out / mask_rel)
            rows.append({"path": rel, "label": CLASSES[label], "site": site, "format": fmt,
                         **facts, "mask": mask_rel})
            advance(1)
    write_manifest(out, rows)
    return {"class_counts": counts, "shape": SHAPE, "spacing_mm": SPACING,
            "lesion_contrast_hu": LESION_HU, "lesion_radius_mm": LESION_RADIUS_MM,
            "sites": {s: {"noise_hu": sd, "kernel_sigma_voxels": sg} for s, (sd, sg) in
                      SITES.items()},
            "signal": " ".join(write_ct3d.__doc__.split())}
