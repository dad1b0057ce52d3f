"""NIfTI volumes and DICOM series as 2-D samples: axial slices after RAS orientation, every
slice_step-th, the entry's window, each slice grouped by its volume.

One synthetic volume in a known RAS frame is written three ways (a NIfTI in RAS, a NIfTI stored
sagittally with flipped axes, an axial DICOM series in LPS with shuffled file names): every way
must give the same slices, and the DICOM slices must be the files' own pixel arrays.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import MODEL

import vlmprobe
from vlmprobe.data import load_dataset, read_sample
from vlmprobe.data.check import dataset_split
from vlmprobe.validation import VlmprobeError

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

SHAPE = (20, 24, 9)  # x (R), y (A), z (S) voxels
SPACING = (0.8, 0.9, 2.5)


def ras_volume(seed: int, label: int) -> np.ndarray:
    """HU-like values in RAS voxel order: a ramp along each axis (so any flip shows) and a
    bright block whose size depends on the label."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    vol = -200 + 10.0 * x + 3.0 * y + 20.0 * z + rng.normal(0, 2, SHAPE)
    vol[4:8 + 4 * label, 10:14, :] += 300
    return np.round(vol).astype(np.int16)


def ras_affine() -> np.ndarray:
    return np.diag([*SPACING, 1.0])


def write_nifti_ras(path, vol):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, ras_affine()), path)


def write_nifti_sagittal(path, vol):
    """The same volume stored as (A->P, S, R->L) voxels: a sagittal, flipped acquisition."""
    data = np.transpose(vol, (1, 2, 0))[::-1, :, ::-1]  # voxel (j, k, i) -> P, S, L
    affine = np.zeros((4, 4))
    affine[1, 0] = -SPACING[1]  # voxel axis 0 runs posterior
    affine[2, 1] = SPACING[2]  # axis 1 superior
    affine[0, 2] = -SPACING[0]  # axis 2 runs left
    affine[:3, 3] = [(SHAPE[0] - 1) * SPACING[0], (SHAPE[1] - 1) * SPACING[1], 0]
    affine[3, 3] = 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)


def write_dicom_series(folder, vol, series_uid="1.2.3.4", order=None, window=(40, 400)):
    """Axial slices in LPS (the standard orientation), one file per z, names shuffled."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    order = order or list(range(SHAPE[2]))
    for name_index, k in enumerate(order):
        # LPS: column i -> patient left (= RAS x reversed), row j -> posterior (y reversed)
        pixels = vol[::-1, ::-1, k].T  # [rows (A->P), columns (R->L)]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"{series_uid}.{k}"
        ds.SeriesInstanceUID = series_uid
        ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CT", *pixels.shape, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.WindowCenter, ds.WindowWidth = window
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # row spacing, column spacing
        x0, y0 = -(SHAPE[0] - 1) * SPACING[0], -(SHAPE[1] - 1) * SPACING[1]
        ds.ImagePositionPatient = [x0, y0, k * SPACING[2]]  # pixel (0, 0) in LPS
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(folder / f"slice_{(name_index * 7) % 97:03d}.dcm", enforce_file_format=True)


def _slices(root, ds):
    return [np.asarray(read_sample(root, s.relpath, ds.entry.dicom_window)) for s in ds.samples]


def test_nifti_and_dicom_series_give_the_same_axial_slices(tmp_path):
    vol = ras_volume(0, 1)
    root = tmp_path / "ct"
    (root / "a").mkdir(parents=True)
    write_nifti_ras(root / "a" / "ras.nii.gz", vol)
    write_nifti_sagittal(root / "a" / "sag.nii", vol)
    shuffled = [3, 8, 0, 5, 1, 7, 2, 6, 4]
    write_dicom_series(root / "a" / "series1", vol, order=shuffled)
    ds = load_dataset(f"imagefolder:{root}", dicom_series=True, dicom_window="40,400")
    by_volume = {}
    for s, image in zip(ds.samples, _slices(ds.root, ds)):
        volume, _, k = s.relpath.partition("#axial/")
        by_volume.setdefault(volume, []).append((int(k), image))
        assert s.metadata["group"] == volume
    assert sorted(by_volume) == ["a/ras.nii.gz", "a/sag.nii", "a/series1"]
    reference = by_volume["a/ras.nii.gz"]
    assert [k for k, _ in reference] == list(range(SHAPE[2]))
    for volume in ("a/sag.nii", "a/series1"):
        for (k, a), (_, b) in zip(reference, by_volume[volume]):
            assert np.array_equal(a, b), (volume, k)
    # an axial slice is anterior-up, patient's right on the left: the DICOM file's own pixels
    expected = np.clip((vol[::-1, ::-1, 4].T - (40 - 0.5)) / 399 + 0.5, 0, 1)
    assert np.array_equal(reference[4][1][..., 0], np.round(expected * 255).astype(np.uint8))
    assert "volume: NIfTI (nibabel) or DICOM series" in ds.intensity_pipeline
    assert ds.cache_view == "window=40,400"


def test_slice_step_tags_window_and_groups_keep_volumes_whole(tmp_path):
    root = tmp_path / "ct"
    for label, c in enumerate(("benign", "malignant")):
        for p in range(4):
            write_nifti_ras(root / c / f"patient{p}.nii.gz", ras_volume(10 * label + p, label))
    write_dicom_series(root / "benign" / "extra", ras_volume(99, 0), series_uid="9.9")
    ds = load_dataset(f"imagefolder:{root}", slice_step=3, dicom_series=True)
    assert len(ds) == 9 * 3 and {s.relpath.rpartition("/")[2] for s in ds.samples} == {"0", "3", "6"}
    dicom = next(s for s in ds.samples if s.relpath.startswith("benign/extra"))
    file = sorted((root / "benign" / "extra").iterdir())[0]
    tags = np.asarray(read_sample(ds.root, dicom.relpath, "tags"))
    assert np.array_equal(tags, np.asarray(read_sample(ds.root, dicom.relpath, "40,400")))
    assert not np.array_equal(tags, np.asarray(read_sample(ds.root, dicom.relpath, "minmax")))
    assert pydicom.dcmread(file).WindowCenter == 40
    [split] = dataset_split(f"imagefolder:{root}", out=tmp_path / "caches", grouping="grouped",
                            slice_step=3, dicom_series=True)
    assert split.n_crossing == 0 and split.n_groups == 9
    side = {}
    for rel, test in zip(split.split.relpaths, split.split.test.tolist()):
        side.setdefault(rel.partition("#")[0], set()).add(test)
    assert all(len(v) == 1 for v in side.values()) and len(side) == 9


def test_a_folder_mixing_series_or_labels_is_refused_naming_the_file(tmp_path, tiny_model):
    vol = ras_volume(1, 0)
    root = tmp_path / "ct"
    write_dicom_series(root / "c" / "mixed", vol, series_uid="1.1")
    write_dicom_series(tmp_path / "other", vol, series_uid="2.2", order=[0])
    intruder = next((tmp_path / "other").iterdir())
    intruder.rename(root / "c" / "mixed" / "zz_intruder.dcm")
    out = tmp_path / "caches"
    with pytest.raises(VlmprobeError, match=r"mixed mixes DICOM series: .*zz_intruder.dcm belongs "
                                            r"to series 2.2"):
        vlmprobe.extract(MODEL, f"imagefolder:{root}", out=out,
                         dataset_options={"dicom_series": True})
    assert not out.exists()


def test_volume_slices_go_through_extract(tmp_path, tiny_model):
    root = tmp_path / "ct"
    for label, c in enumerate(("a", "b")):
        write_nifti_ras(root / c / "v.nii.gz", ras_volume(label, label))
    r = vlmprobe.extract(MODEL, f"imagefolder:{root}", out=tmp_path / "caches", device="cpu",
                         num_workers=0, progress=False, dataset_options={"slice_step": 4})
    cache = r.read()
    assert cache.relpaths == ["a/v.nii.gz#axial/0", "a/v.nii.gz#axial/4", "a/v.nii.gz#axial/8",
                              "b/v.nii.gz#axial/0", "b/v.nii.gz#axial/4", "b/v.nii.gz#axial/8"]
    assert cache.metadata["group"] == ["a/v.nii.gz"] * 3 + ["b/v.nii.gz"] * 3
    assert "volume: NIfTI" in cache.intensity_pipeline
    one = vlmprobe.load_encoder(MODEL, "cpu")
    image = read_sample(root, cache.relpaths[4])
    np.testing.assert_allclose(one.encode_images(one.transform_(image)[None])[0].numpy(),
                               cache.embeddings[4], atol=1e-4)
    assert Image.fromarray(np.asarray(image)).size == (SHAPE[0], SHAPE[1])
