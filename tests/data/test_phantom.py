"""The BUSI phantom: layout, ground truth that matches the pixels, the word model, determinism."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vlmprobe.encoders.geometry import input_geometry
from vlmprobe.data.phantoms import make_phantom
from vlmprobe.data.phantoms.breastus import (BUSI_COUNTS, CLASS_WORD, WORDS, class_counts, sample_words)
from vlmprobe.data.phantoms.common import CROP_MODEL, text_bitmap
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

N = 18


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return make_phantom("breastus", tmp_path_factory.mktemp("phantom") / "busi", n=N, seed=3,
                        progress=False)


def _rows(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_layout_and_names_match_busi(phantom):
    counts = class_counts(N)
    assert sorted(p.name for p in phantom.iterdir()) == ["benign", "malignant", "manifest.csv",
                                                         "normal", "phantom.json"]
    for c, k in counts.items():
        names = {p.name for p in (phantom / c).iterdir()}
        assert names == {f"{c} ({i}){s}.png" for i in range(1, k + 1) for s in ("", "_mask")}
    rows = _rows(phantom)
    assert [r["path"] for r in rows] == [f"{c}/{c} ({i}).png" for c, k in counts.items()
                                         for i in range(1, k + 1)]
    assert all(r["mask_path"] == r["path"].replace(".png", "_mask.png") for r in rows)
    meta = json.loads((phantom / "phantom.json").read_text())
    assert meta["parameters"] == {"n": N, "seed": 3, "text_label_correlation": 0.8}
    assert meta["class_counts"] == counts
    assert meta["version"] and "r + (1-r)/3" in meta["correlation_model"]


def test_real_loader_reads_the_phantom(phantom):
    from vlmprobe.data import load_dataset

    data = load_dataset("breastus_phantom", phantom)
    assert len(data.samples) == N
    words = {r["path"]: r["word"] for r in _rows(phantom)}
    assert all(s.metadata["word"] == words[s.relpath] for s in data.samples)


def test_class_counts_follow_busi():
    assert class_counts(sum(BUSI_COUNTS.values())) == BUSI_COUNTS
    for n in range(9, 200):
        counts = class_counts(n)
        assert sum(counts.values()) == n and min(counts.values()) >= 3
        assert counts["benign"] >= counts["malignant"] >= counts["normal"]


def test_masks_match_lesions(phantom):
    cfg = get_model_entry(CROP_MODEL).preprocess
    for r in _rows(phantom):
        img, mask = _gray(phantom / r["path"]), _gray(phantom / r["mask_path"])
        assert mask.shape == img.shape and set(np.unique(mask)) <= {0, 255}
        if r["label"] == "normal":
            assert r["lesion_shape"] == "none" and not mask.any()
            continue
        assert r["lesion_shape"] == {"benign": "oval", "malignant": "irregular"}[r["label"]]
        cx, cy, rx, ry = (float(r[f"lesion_{k}"]) for k in ("cx", "cy", "rx", "ry"))
        lesion = mask > 0
        assert lesion[round(cy), round(cx)]
        assert 0.7 < lesion.sum() / (np.pi * rx * ry) < 1.4
        assert (rx > ry) == (r["lesion_shape"] == "oval")  # benign wider, malignant taller
        h, w = img.shape
        assert input_geometry(cfg, w, h).seen_mask()[lesion].all()
        ring = ndimage.binary_dilation(lesion, iterations=12) & ~lesion
        assert img[lesion].mean() < 0.9 * img[ring].mean()


def test_word_is_bright_inside_the_kept_crop(phantom):
    cfg = get_model_entry(CROP_MODEL).preprocess
    rows = _rows(phantom)
    assert {r["word"] for r in rows} <= set(WORDS)
    for r in rows:
        box = [r[k] for k in ("text_x0", "text_y0", "text_x1", "text_y1")]
        if not r["word"]:
            assert box == ["", "", "", ""]
            continue
        x0, y0, x1, y1 = map(int, box)
        img = _gray(phantom / r["path"])
        assert 20 <= y1 - y0 <= 30
        bits = text_bitmap(r["word"], (y1 - y0) // 7)
        assert bits.shape == (y1 - y0, x1 - x0)
        assert img[y0:y1, x0:x1][bits].min() >= 225
        h, w = img.shape
        assert input_geometry(cfg, w, h).seen_mask()[y0:y1, x0:x1].all()
        assert not _gray(phantom / r["mask_path"])[y0:y1, x0:x1].any()


def test_same_seed_same_bytes_other_seed_differs(phantom, tmp_path):
    again = make_phantom("breastus", tmp_path / "again", n=N, seed=3, progress=False)
    other = make_phantom("breastus", tmp_path / "other", n=N, seed=4, progress=False)
    files = sorted(p.relative_to(phantom) for p in phantom.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((phantom / f).read_bytes() == (again / f).read_bytes() for f in files)
    images = [f for f in files if f.suffix == ".png" and "_mask" not in f.name]
    assert all((phantom / f).read_bytes() != (other / f).read_bytes() for f in images)


def test_word_model():
    labels = ["normal", "benign", "malignant"] * 10000
    rng = np.random.default_rng(0)
    assert sample_words(labels, 1.0, rng) == [CLASS_WORD[c] for c in labels]
    for r in (0.0, 0.5):
        words = np.array(sample_words(labels, r, rng))
        for c in ("normal", "benign", "malignant"):
            of_class = words[np.array(labels) == c]
            for w in WORDS:
                expected = r * (w == CLASS_WORD[c]) + (1 - r) / 3
                assert abs(np.mean(of_class == w) - expected) < 0.02


def test_written_words_follow_r(tmp_path):
    rows = _rows(make_phantom("breastus", tmp_path / "r1", n=12, text_label_correlation=1.0,
                              progress=False))
    assert all(r["word"] == CLASS_WORD[r["label"]] for r in rows)


@pytest.mark.parametrize("kwargs, match", [
    ({"text_label_correlation": -0.1}, r"\[0, 1\]"),
    ({"text_label_correlation": 1.5}, r"\[0, 1\]"),
    ({"n": 5}, "too small"),
    ({"seed": -1}, "non-negative"),
    ({"dataset": "busi"}, "Valid phantom datasets: .*breastus"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"dataset": "breastus", "out": tmp_path / "x", "n": 12, "progress": False, **kwargs}
    with pytest.raises(VlmprobeError, match=match):
        make_phantom(**args)
    assert not (tmp_path / "x").exists()


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(VlmprobeError, match="not an empty directory"):
        make_phantom("breastus", tmp_path, n=12, progress=False)


def test_interrupted_generation_leaves_no_half_dataset(tmp_path, monkeypatch):
    from vlmprobe.data import phantoms as phantom

    def dies_midway(out, *args):
        (out / "normal").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setitem(phantom.GENERATORS, "breastus", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        phantom.make_phantom("breastus", tmp_path / "ph", n=12, progress=False)
    assert not (tmp_path / "ph").exists()
    monkeypatch.undo()
    out = phantom.make_phantom("breastus", tmp_path / "ph", n=12, progress=False)
    assert (out / "phantom.json").is_file()
