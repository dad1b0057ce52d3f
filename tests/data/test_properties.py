"""Property-based tests (hypothesis): decoding + the model's transform, and the splits.

Decoding: any size, mode, bit depth and file format, whole or cut short, becomes a finite
tensor of the model's input shape, or a :class:`VlmprobeError` naming the file; nothing else.
Splits: stratification kept, no row in two parts, groups never cross, same seed -> same split,
whatever the order the rows come in.
"""
from __future__ import annotations

import io
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmprobe.data import read_image
from vlmprobe.data.splits import SplitSpec, make_split
from vlmprobe.validation import VlmprobeError

MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
FORMATS = ("PNG", "TIFF", "BMP", "JPEG", "GIF", "WEBP")


@pytest.fixture(scope="module")
def transforms(tmp_path_factory):
    """The 8-bit and float input transforms of the 64-px test model (loaded once)."""
    from conftest import write_tiny_registry
    from tiny_models import MODEL

    from vlmprobe.encoders import load_encoder
    from vlmprobe.encoders.transforms import input_transform

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMPROBE_REGISTRY", str(write_tiny_registry(tmp_path_factory.mktemp("reg"))))
        encoder = load_encoder(MODEL, "cpu")
    return {"8bit": input_transform(encoder), "float": input_transform(encoder, "float")}


def _image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        top = {"I;16": 65535, "I": 2 ** 20, "F": 1}[mode]
        return Image.fromarray((rng.random((h, w)) * top).astype(dtype))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS), w=st.integers(1, 90),
       h=st.integers(1, 90), seed=st.integers(0, 2 ** 16), cut=st.none() | st.floats(0, 0.999),
       intensity=st.sampled_from(("8bit", "float")))
def test_any_image_becomes_a_finite_model_input_or_a_named_error(transforms, mode, fmt, w, h,
                                                                   seed, cut, intensity):
    buf = io.BytesIO()
    try:
        _image(mode, w, h, seed).save(buf, fmt)
    except (OSError, KeyError, ValueError, TypeError):
        assume(False)  # PIL cannot write this mode in this format
    data = buf.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x.{fmt.lower()}"
        path.write_bytes(data if cut is None else data[: int(len(data) * cut)])
        try:
            image = read_image(path, intensity=intensity)
        except VlmprobeError as e:
            assert str(path) in str(e)
            event("refused")
            return
    pixels = transforms[intensity](image)
    assert isinstance(pixels, torch.Tensor) and tuple(pixels.shape) == (3, 64, 64)
    assert torch.isfinite(pixels).all()


@st.composite
def labelled_rows(draw):
    """Rows with 2-4 classes of 7-30 images each, patient groups of 1-4 images (some images
    without one), in a drawn order."""
    sizes = draw(st.lists(st.integers(7, 30), min_size=2, max_size=4))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = len(labels)
    per_group = draw(st.integers(1, 4))
    alone = draw(st.sets(st.integers(0, n - 1), max_size=n // 5))  # no id: a group of its own
    groups = ["" if i in alone else f"p{i // per_group}" for i in range(n)]
    order = draw(st.permutations(range(n)))
    relpaths = [f"img{i:04d}.png" for i in range(n)]
    return ([relpaths[i] for i in order], labels[list(order)], [groups[i] for i in order])


def _as_dict(split):
    return {r: (bool(t), int(f)) for r, t, f in zip(split.relpaths, split.test, split.fold)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=labelled_rows(), seed=st.integers(0, 1000), grouping=st.sampled_from(["paper",
                                                                                 "grouped"]))
def test_splits_keep_strata_and_groups_and_are_deterministic(rows, seed, grouping):
    relpaths, labels, groups = rows
    spec = SplitSpec(grouping=grouping, seed=seed)
    try:
        split = make_split(relpaths, labels, spec, "prop", groups)
    except VlmprobeError as e:  # too few groups for a grouped split: said, not crashed
        assert grouping == "grouped" and "grouped" in str(e)
        event("too few groups")
        return
    # every row exactly once, in the test part (fold -1) or in one training fold
    assert sorted(split.relpaths) == sorted(relpaths) and len(set(split.relpaths)) == len(relpaths)
    assert all((f == -1) == t for t, f in zip(split.test, split.fold))
    assert set(split.fold[~split.test].tolist()) == set(range(spec.n_folds))
    label_of = dict(zip(relpaths, labels.tolist()))
    y = np.array([label_of[r] for r in split.relpaths])
    assert set(y[split.test].tolist()) == set(y.tolist())  # every class is tested
    if grouping == "paper":  # stratified: each class's test share within one image of 20 %
        n, t = Counter(y.tolist()), Counter(y[split.test].tolist())
        assert all(abs(t[c] - spec.test_fraction * n[c]) <= 1 for c in n)
    else:  # a group sits in one part and one fold
        group_of = dict(zip(relpaths, groups))
        where: dict[str, set] = {}
        for r, f in zip(split.relpaths, split.fold):
            where.setdefault(group_of[r] or r, set()).add(int(f))
        assert all(len(parts) == 1 for parts in where.values())
    # same seed, rows in another order -> the same split
    again = make_split(relpaths[::-1], labels[::-1], spec, "prop", groups[::-1])
    assert _as_dict(again) == _as_dict(split)
