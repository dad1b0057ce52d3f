"""Extraction options: --batch-size auto on a CPU, precision checks."""
from __future__ import annotations

import pytest

from extract_helpers import DATASET, MODEL, tiny_model  # noqa: F401
from vlmprobe.cache import read_cache
from vlmprobe.extract import auto_batch_size, extract
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
