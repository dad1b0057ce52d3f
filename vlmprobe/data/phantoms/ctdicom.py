"""ctdicom: a DICOM phantom whose class shows only inside a stated window.

The lesion is +20 HU in the liver: plain inside the tag window (soft tissue, C 50 / W 100), all
but lost under a full-range min-max mapping, so the DICOM window decides what a model can see.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...messages import progress_bar
from ..decode import require_pydicom
from .common import (MIN_PER_CLASS, class_labels, gauss, proportional_counts, smooth_noise,
                     write_manifest)

# -- ctdicom: a DICOM phantom whose class shows only inside a stated window -----------------------
#: The soft-tissue window the lesion is visible in (Hounsfield units); written as window tags.
CT_WINDOW = (50.0, 100.0)


CT_LESION_HU = 20.0  # lesion contrast over liver: 51 grey levels in the window, ~3 in min-max


CT_VARIANTS = ("12-bit unsigned, intercept -1024", "16-bit signed", "12-bit MONOCHROME1",
               "16-bit signed, RLE Lossless")


def _ct_hu(rng, lesion: bool, side: int) -> tuple[np.ndarray, dict]:
    """An abdominal CT slice in HU: air, fat-rimmed body, liver, spine; a faint liver lesion."""
    h = w = side
    hu = np.full((h, w), -1000.0)
    cx, cy = w / 2 + rng.uniform(-4, 4), h / 2 + rng.uniform(-3, 3)
    body = gauss(h, w, cx, cy, w * rng.uniform(0.40, 0.45), h * rng.uniform(0.32, 0.37), 6)
    hu = hu * (1 - body) + (-90.0) * body  # fat
    soft = gauss(h, w, cx, cy, w * 0.36, h * 0.29, 6)
    hu = hu * (1 - soft) + 40.0 * soft
    lx, ly = cx - w * 0.12, cy - h * 0.04
    liver = gauss(h, w, lx, ly, w * 0.17, h * 0.17, 4)
    hu = hu * (1 - liver) + 55.0 * liver
    spine = gauss(h, w, cx, cy + h * 0.22, w * 0.05, h * 0.05, 4)
    hu = hu * (1 - spine) + 700.0 * spine
    hu += 9.0 * smooth_noise(rng, h, w, 2) * body
    fields = {"lesion_cx": "", "lesion_cy": "", "lesion_r": ""}
    if lesion:
        r = rng.uniform(0.07, 0.1) * w
        ex, ey = lx + rng.uniform(-0.06, 0.06) * w, ly + rng.uniform(-0.06, 0.06) * h
        hu += CT_LESION_HU * gauss(h, w, ex, ey, r, r, 3)
        fields = {"lesion_cx": round(ex, 1), "lesion_cy": round(ey, 1), "lesion_r": round(r, 1)}
    return hu, fields


def _ct_dicom(hu: np.ndarray, variant: int, path: Path, **tags) -> None:
    """Write ``hu`` as a single-frame CT DICOM in one of :data:`CT_VARIANTS`; ``tags``: more
    elements (a series' UIDs and position tags)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(
        entropy_srcs=[path.name])  # reproducible
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CT", *hu.shape, 1
    ds.BitsAllocated = 16
    centre, width = CT_WINDOW
    if variant in (0, 2):  # 12-bit unsigned: stored = HU + 1024
        stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        if variant == 2:  # MONOCHROME1: stored inverted; displayed the same after inversion
            stored = (4095 - stored).astype(np.uint16)
            centre = 2048 - centre  # values are 2047 - HU: the same window, mirrored (DICOM linear)
    else:  # 16-bit signed HU
        stored = np.round(hu).astype(np.int16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if variant == 2 else "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = centre, width
    ds.PixelData = stored.tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if variant == 3:
        ds.compress(RLELossless, stored, generate_instance_uid=False)  # seeded: same bytes
    ds.save_as(path, enforce_file_format=True)


def write_ctdicom(out, n, seed, r, progress, _size=None, minimum=MIN_PER_CLASS):
    """CT DICOMs in ``<class>/ct_<i>.dcm`` (no_lesion, lesion): the lesion is +20 HU in the
    liver, plain inside the tag window (soft tissue, C 50 / W 100) and all but lost under a
    full-range min-max mapping. Files cycle through :data:`CT_VARIANTS`."""
    require_pydicom("The ctdicom phantom")
    classes = ("no_lesion", "lesion")
    counts = proportional_counts(dict.fromkeys(classes, 1), n, minimum)
    rows = []
    with progress_bar("phantom ctdicom", n, enabled=progress) as advance:
        for k, label in enumerate(class_labels(counts, list(classes))):
            hu, fields = _ct_hu(np.random.default_rng([seed, 1, k]), label == 1, 128)
            rel = f"{classes[label]}/ct_{k:04d}.dcm"
            (out / classes[label]).mkdir(exist_ok=True)
            _ct_dicom(hu, k % len(CT_VARIANTS), out / rel)
            rows.append({"path": rel, "label": classes[label],
                         "variant": CT_VARIANTS[k % len(CT_VARIANTS)], **fields})
            advance(1)
    write_manifest(out, rows)
    return {"class_counts": counts, "window": {"centre": CT_WINDOW[0], "width": CT_WINDOW[1]},
            "lesion_contrast_hu": CT_LESION_HU, "variants": CT_VARIANTS,
            "signal": " ".join(write_ctdicom.__doc__.split())}
