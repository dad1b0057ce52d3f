"""The volume QC figure: what a 3-D encoder sees, through the lesion, with provenance."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from vlmprobe.data.phantoms import make_phantom
from vlmprobe.data.volume_qc import orthogonal_slices, volume_qc, voxel_of
from vlmprobe.data.volumes import Volume, load_volume
from vlmprobe.encoders.merlin_family import MerlinTransform
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_phantom("ct3d", tmp_path_factory.mktemp("ct") / "ct3d", n=2, progress=False,
                        min_per_class=1)


def test_the_marked_voxel_is_the_lesion_after_the_transform(root):
    """Resampled, padded and cropped with the image, the lesion mask is 1 at the voxel the QC
    figure marks (the transformed affine maps the manifest's RAS millimetres there)."""
    with open(root / "manifest.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["label"] == "lesion")
    transform = MerlinTransform(get_model_entry("merlin").preprocess)
    mask = nib.load(root / row["mask"])
    as_hu = Volume(np.asarray(mask.dataobj, np.float32) * 1000, mask.affine, row["mask"])
    seen_mask = transform.meta(as_hu)
    seen = transform.meta(load_volume(root / row["path"]))
    assert np.allclose(np.asarray(seen.affine), np.asarray(seen_mask.affine), atol=1e-4)
    voxel = np.round(voxel_of(seen.affine, [float(row[f"lesion_{a}_mm"]) for a in "xyz"]))
    assert seen_mask[0][tuple(voxel.astype(int))] > 0.75  # 1000 HU -> 1.0 inside


def test_volume_qc_writes_figures_with_provenance(root, tmp_path):
    paths = volume_qc("merlin", "ct3d", root, out=tmp_path, n=2)
    assert [p.name for p in paths] == ["ct3d.merlin.qc0.png", "ct3d.merlin.qc0.svg",
                                       "ct3d.merlin.qc1.png", "ct3d.merlin.qc1.svg"]
    meta = json.loads(Image.open(paths[0]).info["Description"])
    assert meta["stage"] == "volume_qc" and meta["relpath"].endswith("#volume")
    assert "spacing=(1.5, 1.5, 3.0)" in meta["transform"]
    with pytest.raises(VlmprobeError, match="reads 2-D images"):
        volume_qc("efficientnet_lite0", "ct3d", root, out=tmp_path)
    with pytest.raises(VlmprobeError, match=r"3-D volume \[X, Y, Z\], got shape \(4, 4\)"):
        orthogonal_slices(np.zeros((4, 4)), (1, 1, 1))
