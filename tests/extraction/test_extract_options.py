"""Extraction options: --batch-size auto on a CPU, precision checks."""
from __future__ import annotations

import pytest

from extract_helpers import DATASET, MODEL
from vlmprobe.cache import read_cache
from vlmprobe.extraction import auto_batch_size, extract
from vlmprobe.validation import VlmprobeError


def test_auto_batch_size_on_cpu_times_candidates_and_is_recorded(tiny_busi, tiny_model, tmp_path):
    from vlmprobe.encoders import load_encoder

    enc = load_encoder(MODEL, "cpu")
    x = enc.transform_(__import__("PIL.Image").Image.new("RGB", (90, 70)))
    assert auto_batch_size(enc, x, cpu_candidates=(2, 4)) in (2, 4)
    r = extract(MODEL, DATASET, root=tiny_busi, out=tmp_path, batch_size="auto", num_workers=0,
                progress=False)
    assert read_cache(r.path).attrs["batch_size"] in (4, 8, 16, 32)


def test_bad_precision_and_batch_size_are_refused(tiny_busi, tiny_model, tmp_path):
    kw = dict(root=tiny_busi, out=tmp_path, num_workers=0, progress=False)
    with pytest.raises(VlmprobeError, match="fp16 needs a GPU"):
        extract(MODEL, DATASET, precision="fp16", device="cpu", **kw)
    with pytest.raises(VlmprobeError, match="choose one of fp32, fp16, bf16"):
        extract(MODEL, DATASET, precision="half", **kw)
    with pytest.raises(VlmprobeError, match="positive integer or 'auto'"):
        extract(MODEL, DATASET, batch_size=0, **kw)


def test_fast_decode_is_faithful_to_the_official_transform_and_keyed_apart(tiny_model, tmp_path):
    import numpy as np
    from PIL import Image

    from vlmprobe.cache.tools import compare_caches
    from vlmprobe.registry import get_dataset_entry
    from vlmprobe.encoders import load_encoder
    from vlmprobe.encoders.transforms import fast_transform

    rng = np.random.default_rng(0)
    root = tmp_path / "brainmr"
    for c in get_dataset_entry("brainmr").classes:
        (root / c).mkdir(parents=True)
        for i in range(2):
            smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((32, 32, 1)))
            noisy = smooth + rng.normal(0, 8, smooth.shape)  # detail for the resize to filter
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
                root / c / f"{i}.jpg", quality=90)
    official = load_encoder(MODEL, "cpu").transform_
    fast = fast_transform(official)
    im = Image.open(next(root.rglob("*.jpg"))).convert("RGB")
    a, b = official(im), fast(im)
    assert a.shape == b.shape == (3, 64, 64)
    assert (a - b).abs().max() < 4 / 255 / 0.224  # a grey level or two, never a different crop
    assert fast_transform(lambda image: image) is None  # not a torchvision Compose: exact path
    kw = dict(root=root, batch_size=4, num_workers=0, progress=False)
    exact = extract(MODEL, "brainmr", out=tmp_path / "exact", **kw)
    fast = extract(MODEL, "brainmr", out=tmp_path / "fast", fast_decode=True, **kw)
    a, b = read_cache(exact.path), read_cache(fast.path)
    assert a.cache_key != b.cache_key and "fast decode" in b.attrs["intensity_pipeline"]
    assert b.attrs["provenance"]["fast_decode"] is True
    r = compare_caches(a, b)
    assert r["n_common"] == 8 and not r["bitwise_identical"] and r["cosine"]["min"] > 0.999
