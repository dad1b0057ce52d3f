"""CT volumes as samples: the ct3d phantom (seeded HU volumes as NIfTI and DICOM series, lesion
masks, manifest), the whole-volume layout (one sample per volume, fingerprints and splits as for
images), what `datasets check` reports of volumes, and series that must be refused."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from vlmprobe.data import load_dataset
from vlmprobe.data.check import check_dataset
from vlmprobe.data.phantoms import make_phantom
from vlmprobe.data.phantoms.ct3d import LESION_HU, SPACING
from vlmprobe.data.volumes import load_volume
from vlmprobe.validation import VlmprobeError

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_phantom("ct3d", tmp_path_factory.mktemp("ct") / "ct3d", n=6, seed=1,
                        progress=False, min_per_class=3)


def _rows(root):
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_one_sample_per_volume_with_its_manifest_row(root):
    ds = load_dataset("ct3d", root)
    rows = _rows(root)
    assert sorted(s.relpath for s in ds.samples) == sorted(f"{r['path']}#volume" for r in rows)
    assert {r["format"] for r in rows} == {"nifti", "dicom_series"}
    for s in ds.samples:
        row = next(r for r in rows if f"{r['path']}#volume" == s.relpath)
        assert ds.class_names[s.label] == row["label"] and s.metadata["site"] == row["site"]
    assert ds.intensity_pipeline.startswith("whole volume:")
    assert len(set(ds.fingerprint()[1])) == len(ds)  # one content digest per volume


def test_lesions_lie_where_manifest_and_masks_say(root):
    """In the RAS volume the reader gives, the mask covers the lesion: its voxels are
    LESION_HU darker than the liver shell around them."""
    for row in _rows(root):
        volume = load_volume(root / row["path"])
        mask = nib.load(root / row["mask"])
        assert np.allclose(mask.affine, volume.affine, atol=1e-3)
        m = np.asarray(mask.dataobj) > 0
        if row["label"] == "no_lesion":
            assert not m.any()
            continue
        centre = np.linalg.inv(volume.affine) @ [*(float(row[f"lesion_{a}_mm"]) for a in "xyz"), 1]
        assert m[tuple(np.round(centre[:3]).astype(int))]
        from scipy.ndimage import binary_dilation
        shell = binary_dilation(m, iterations=2) & ~binary_dilation(m)
        inside, around = volume.array[m].mean(), volume.array[shell].mean()
        assert inside - around < 0.5 * LESION_HU, (row["path"], inside, around)


def test_phantom_is_seeded(root, tmp_path):
    again = make_phantom("ct3d", tmp_path / "again", n=6, seed=1, progress=False, min_per_class=3)
    assert load_dataset("ct3d", again).fingerprint()[2] == load_dataset("ct3d", root).fingerprint()[2]


def test_check_reports_spacing_orientation_and_slice_gaps(root):
    report = check_dataset("ct3d", root)
    assert report.ok and report.n_images == 6
    (geometry,) = report.of("volume_geometry")
    assert geometry.message.startswith(f"spacing {SPACING[0]:.3g} x {SPACING[1]:.3g} x "
                                       f"{SPACING[2]:.3g} mm, stored orientation LPS (6 volumes")
    (gaps,) = report.of("slice_gaps")
    assert gaps.message == f"3 DICOM series, slice gaps {SPACING[2]:.3g}-{SPACING[2]:.3g} mm"
    assert not report.of("mixed_spacing")


def _series(root):
    return next(root / r["path"] for r in _rows(root) if r["format"] == "dicom_series")


def test_a_series_with_a_missing_slice_is_refused_naming_the_gap(root, tmp_path):
    copy = tmp_path / "ct3d"
    shutil.copytree(root, copy)
    series = _series(copy)
    (series / "slice_010.dcm").unlink()
    with pytest.raises(VlmprobeError, match=r"slices are not evenly spaced: slice_009.dcm -> "
                                            r"slice_011.dcm is 10 mm apart.*a slice is missing"):
        load_dataset("ct3d", copy)


def test_a_folder_mixing_two_series_is_refused(root, tmp_path):
    copy = tmp_path / "ct3d"
    shutil.copytree(root, copy)
    series = [copy / r["path"] for r in _rows(copy) if r["format"] == "dicom_series"]
    same_class = [s for s in series if s.parent == series[-1].parent]
    shutil.copy(same_class[1] / "slice_000.dcm", same_class[0] / "slice_999.dcm")
    with pytest.raises(VlmprobeError, match="mixes DICOM series"):
        load_dataset("ct3d", copy)


def test_umap_thumbnails_of_whole_volumes_are_their_middle_slices(root):
    from vlmprobe.cache import Cache
    from vlmprobe.maps.figures import read_thumbnails

    ds = load_dataset("ct3d", root)
    cache = Cache(np.zeros((len(ds), 4), np.float32), np.array([s.label for s in ds.samples]),
                  [s.relpath for s in ds.samples], ds.class_names, "m", "ct3d", "f", "k")
    thumbs = read_thumbnails(cache, [0, 1], root, px=32)
    assert sorted(thumbs) == [0, 1] and max(thumbs[0].size) == 32
    expected = ds.load_image(1).middle_slice().convert("RGB")
    expected.thumbnail((32, 32))
    assert np.array_equal(np.asarray(thumbs[1]), np.asarray(expected))
