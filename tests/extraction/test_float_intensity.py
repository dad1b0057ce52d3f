"""The opt-in float intensity path: 12/16-bit and DICOM levels reach the model
unrounded, through a float version of the official transform, in caches beside the 8-bit ones.

Tolerances, in pixel units (before Normalize): on a smooth 8-bit image the float transform is
within 1.5/255 of the official one at every pixel and 0.5/255 on average (measured: <= 1.1/255
and 0.3/255; PIL's and torch's antialiased kernels differ by about a grey level and PIL rounds
its resize to 8 bits). Where a sharp image is upsampled with bicubic (MR_small, 64 -> 72 px) the
two kernels differ by up to 3/255 at edges, so on the DICOM files the bound is that image's own
kernel difference + 1/255, the 8-bit path's rounding (measured <= 0.6/255 through the resize).
"""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlmprobe.cache import read_cache
from vlmprobe.cli import app
from vlmprobe.data import dataset_options, load_dataset, read_dicom, read_image, read_sample
from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.transforms import float_transform, input_transform
from vlmprobe.extraction import extract
from vlmprobe.validation import VlmprobeError

pydicom = pytest.importorskip("pydicom")
LEVEL = 1 / 255


def _smooth_image(h=150, w=200, seed=0) -> np.ndarray:
    """A smooth RGB image in [0, 1] (a resize of noise would test aliasing, not the path)."""
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).random((h, w, 3)), (4, 4, 0))
    return (x - x.min()) / (x.max() - x.min())


def _pixel_diff(transform, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised outputs, back in pixel units (x std)."""
    from torchvision import transforms as T

    norm = [s for s in getattr(transform, "transforms", [transform]) if isinstance(s, T.Normalize)]
    std = torch.as_tensor(norm[0].std if norm else transform.std).view(3, 1, 1)
    return (a - b).abs() * std


def _transforms(tiny_encoder):
    """Official transforms as each family builds them: timm (the registry's tiny model),
    open_clip, torchvision's preset, and a Compose with a padding step and PILToTensor."""
    import open_clip
    from torchvision import transforms as T
    from torchvision.transforms._presets import ImageClassification

    return {
        "timm": tiny_encoder.transform_,
        "open_clip": open_clip.image_transform(64, is_train=False, mean=(0.5,) * 3,
                                               std=(0.25,) * 3, interpolation="bicubic"),
        "torchvision": ImageClassification(crop_size=56, resize_size=64),
        "pad": T.Compose([T.Resize(48, T.InterpolationMode.BILINEAR), T.Pad(8, fill=128),
                          T.CenterCrop(60), T.PILToTensor(), T.ConvertImageDtype(torch.float32),
                          T.Normalize((0.4,) * 3, (0.3,) * 3)]),
    }


@pytest.fixture
def tiny_encoder(tiny_model):
    return load_encoder(tiny_model, "cpu")


def test_float_transform_equals_official_on_8bit_images(tiny_encoder):
    img = Image.fromarray(np.round(_smooth_image() * 255).astype(np.uint8))
    as_float = np.asarray(img, np.float32) / 255
    for name, t in _transforms(tiny_encoder).items():
        official, ours = t(img), float_transform(t, name)(as_float)
        assert ours.dtype == torch.float32 and ours.shape == official.shape, name
        d = _pixel_diff(t, official, ours)
        assert d.max() <= 1.5 * LEVEL and d.mean() <= 0.5 * LEVEL, (name, d.max(), d.mean())
    assert input_transform(tiny_encoder) is tiny_encoder.transform_  # 8-bit: untouched


def test_float_decode_keeps_levels(tmp_path):
    ramp = np.linspace(0, 65535, 96 * 128).round().astype(np.uint16).reshape(96, 128)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    f, e = (read_image(tmp_path / "ramp16.png", intensity=i) for i in ("float", "8bit"))
    assert f.dtype == np.float32 and f.shape == (96, 128, 3)
    np.testing.assert_allclose(f[..., 1], ramp / 65535, atol=1e-7)
    assert len(np.unique(f)) > 4000 and len(np.unique(np.asarray(e))) == 256
    assert np.abs(f - np.asarray(e) / 255).max() < LEVEL  # 8-bit: floor(x / 257)
    rgb = (_smooth_image(20, 30) * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb8.png", intensity="float"),
                                  rgb / np.float32(255))
    np.savez(tmp_path / "x.npz", train_images=rgb[None, ..., 0])
    np.testing.assert_array_equal(read_sample(tmp_path, "x.npz#train_images/0", intensity="float"),
                                  np.repeat(rgb[..., :1], 3, 2) / np.float32(255))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_float_path_on_pydicom_files(name, tmp_path, tiny_encoder):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    f, e = read_dicom(path, "tags", "float"), read_dicom(path, "tags")
    assert len(np.unique(f)) > 256 and len(np.unique(np.asarray(e))) <= 256
    assert np.abs(f - np.asarray(e) / 255).max() <= 0.5 * LEVEL + 1e-6  # the 8-bit rounding only
    e_float = np.asarray(e, np.float32) / 255
    for t_name, t in _transforms(tiny_encoder).items():
        ours, official = float_transform(t, t_name), t(e)
        resize_error = _pixel_diff(t, official, ours(e_float)).max()  # kernels, this image
        assert _pixel_diff(t, ours(e_float), ours(f)).max() <= LEVEL  # the quantisation only
        assert _pixel_diff(t, official, ours(f)).max() <= resize_error + LEVEL, (name, t_name)


def test_float_refused_where_the_transform_is_not_torchvision(tiny_encoder):
    import open_clip
    from transformers import CLIPImageProcessor

    from vlmprobe.encoders.hf_family import ProcessorTransform

    with pytest.raises(VlmprobeError, match=r"medsiglip's official transform is a "
                       r"ProcessorTransform.*--intensity 8bit for medsiglip"):
        float_transform(ProcessorTransform(CLIPImageProcessor()), "medsiglip")
    longest = open_clip.image_transform(64, is_train=False, resize_mode="longest")
    with pytest.raises(VlmprobeError, match=r"some_clip's official transform has a step "
                       r"ResizeKeepRatio\(size=\(64, 64\).*--intensity 8bit for some_clip"):
        float_transform(longest, "some_clip")
    from torchvision import transforms as T
    nearest = T.Compose([T.Resize(32, T.InterpolationMode.NEAREST), T.ToTensor()])
    with pytest.raises(VlmprobeError, match=r"has a step Resize\(.*nearest"):
        float_transform(nearest, "some_model")
    with pytest.raises(VlmprobeError, match="intensity 'fp'"):
        load_dataset("ctdicom", ".", intensity="fp")
    assert dataset_options(intensity="float") == {"intensity": "float"}


def test_ctdicom_8bit_and_float_caches_side_by_side(tmp_path, tiny_model):  # noqa: F811
    """Both caches coexist (float under @float), keys differ, probe reads both on one split, and
    RISE explains the float cache on float inputs (its base scores are the float embeddings')."""
    from vlmprobe.data.phantoms import make_phantom
    from vlmprobe.probe import LinearProbe, run_probe, probe_path
    from vlmprobe.rise import ImageChoice, RiseConfig, explain_cache

    root = make_phantom("ctdicom", tmp_path / "ct", n=40, progress=False)
    out = tmp_path / "cache"
    eight = extract(tiny_model, "ctdicom", root=root, out=out, device="cpu", num_workers=0,
                    progress=False)
    res = CliRunner().invoke(app, ["extract", "--model", tiny_model, "--dataset", "ctdicom",
                                   "--root", str(root), "--out", str(out), "--workers", "0",
                                   "--device", "cpu", "--intensity", "float"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    flt = out / "ctdicom" / f"{tiny_model}@float.h5"
    assert eight.path == out / "ctdicom" / f"{tiny_model}.h5" and flt.is_file()
    assert extract(tiny_model, "ctdicom", root=root, out=out, device="cpu", num_workers=0,
                   progress=False).status == "up to date"  # the 8-bit cache is untouched
    a, b = read_cache(eight.path), read_cache(flt)
    assert a.cache_key != b.cache_key and a.dataset_fingerprint == b.dataset_fingerprint
    minmax = extract(tiny_model, "ctdicom", root=root, out=out, device="cpu", num_workers=0,
                     progress=False, dataset_options={"dicom_window": "minmax",
                                                      "intensity": "float"})
    assert minmax.path.name == f"{tiny_model}@window=minmax-float.h5"  # a third, beside them
    assert "8-bit RGB" in a.attrs["intensity_pipeline"]
    assert "float32 RGB in [0, 1], no 8-bit rounding" in b.attrs["intensity_pipeline"]
    assert "official transform on float tensors" in b.attrs["intensity_pipeline"]
    assert b.attrs["dataset_entry"]["intensity"] == "float" and b.view_tag == "@float"
    cos = (a.embeddings * b.embeddings).sum(1) / np.linalg.norm(a.embeddings, axis=1) / \
        np.linalg.norm(b.embeddings, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(a.embeddings, b.embeddings)

    results = run_probe([a, b])
    assert [r.dataset for r in results] == ["ctdicom", "ctdicom@float"]
    assert results[0].repeats[0]["split_file"] == results[1].repeats[0]["split_file"]
    probe = LinearProbe.load(probe_path(b, "class"))
    assert probe.info["cache_key"] == b.cache_key and probe.info["dataset"] == "ctdicom"
    # the probe's outputs say how the pixels were decoded, not only the cache's name
    assert [r.intensity_pipeline for r in results] == [a.attrs["intensity_pipeline"],
                                                       b.attrs["intensity_pipeline"]]
    assert probe.info["intensity_pipeline"] == b.attrs["intensity_pipeline"]

    i = 0
    rise = explain_cache(b, RiseConfig(n_masks=8, batch_size=8),
                         ImageChoice(ids=(b.relpaths[i],)), root=root, device="cpu",
                         out=tmp_path / "rise", causal_steps=0)
    row = next(csv.DictReader(open(rise.table)))
    scores = {name: probe.decision_function(torch.from_numpy(c.embeddings[i:i + 1]))[0]
              for name, c in (("8bit", a), ("float", b))}
    target = probe.class_names.index(row["target"])
    got = float(row["score"])
    assert abs(got - float(scores["float"][target])) < 1e-4
    assert abs(got - float(scores["8bit"][target])) > 10 * abs(got - float(scores["float"][target]))
