"""The RISE stage end to end: phantom -> 64-px lite0 cache -> class and word probes -> explain_cache."""
import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vlmprobe.cache import read_cache
from vlmprobe.probe import LinearProbe, run_probe, probe_path
from vlmprobe.rise import ImageChoice, RiseConfig, choose_images, explain_cache, random_probe
from vlmprobe.validation import VlmprobeError

DATASET = "breastus_phantom"


@pytest.fixture(scope="module")
def small(shared_phantom, shared_cache, tmp_path_factory):
    """The shared phantom's 64-px cache, copied here and probed for the class and the word."""
    copy = tmp_path_factory.mktemp("rise_stage") / "caches" / DATASET / shared_cache.name
    copy.parent.mkdir(parents=True)
    shutil.copy2(shared_cache, copy)
    cache = read_cache(copy)
    run_probe([cache])
    run_probe([cache], label="word")
    return shared_phantom, cache


def test_choose_images(small):
    _, cache = small
    probe = LinearProbe.load(probe_path(cache, "class"))
    default = choose_images(cache, probe, ImageChoice(), seed=0)
    assert sorted(cache.labels[default]) == [0, 1, 2]  # one per class
    picked = choose_images(cache, probe, ImageChoice(k=5), seed=0)
    assert len(set(picked)) == 5 and picked == choose_images(cache, probe, ImageChoice(k=5), 0)
    wrong = choose_images(cache, probe, ImageChoice(k=50, misclassified=True), seed=0)
    predicted = probe.decision_function(cache.embeddings[wrong]).argmax(1)
    assert len(wrong) >= 1 and (predicted != cache.labels[wrong]).all()
    named = choose_images(cache, probe, ImageChoice(ids=(cache.relpaths[3], cache.relpaths[0])), 0)
    assert named == [3, 0]
    with pytest.raises(VlmprobeError, match="no image 'nope.png'"):
        choose_images(cache, probe, ImageChoice(ids=("nope.png",)), 0)
    with pytest.raises(VlmprobeError, match="either by --ids"):
        choose_images(cache, probe, ImageChoice(k=2, ids=(cache.relpaths[0],)), 0)


def test_random_probe_keeps_norms_and_changes_directions(small):
    _, cache = small
    probe = LinearProbe.load(probe_path(cache, "class"))
    rand = random_probe(probe, seed=0)
    np.testing.assert_allclose(np.linalg.norm(rand.coef, axis=1), np.linalg.norm(probe.coef, axis=1))
    cos = (rand.coef * probe.coef).sum(1) / np.linalg.norm(probe.coef, axis=1) ** 2
    assert np.abs(cos).max() < 0.2
    np.testing.assert_array_equal(rand.coef, random_probe(probe, seed=0).coef)


def test_explain_two_probes_on_the_same_masks(small, tiny_model, tmp_path):
    data, cache = small
    with_word = [i for i, w in enumerate(cache.metadata["word"]) if w][:2]
    ids = tuple(cache.relpaths[i] for i in with_word)
    out = tmp_path / "out"
    res = explain_cache(cache, RiseConfig(n_masks=40, batch_size=16), ImageChoice(ids=ids),
                        labels=["class", "word"], target="benign", root=data, device="cpu",
                        out=out, causal_steps=4)
    # probes written beside the cache are found although outputs go to --out
    rows = list(csv.DictReader(open(res.table)))
    assert [(r["relpath"], r["probe"]) for r in rows] == [(i, p) for i in ids for p in ("class", "word")]
    for r in rows:
        assert r["text_box_source"] == "dataset" and 0 <= float(r["text_mass"]) <= 1
        assert -1 <= float(r["split_half_r"]) <= 1
    cls = [r for r in rows if r["probe"] == "class"]
    assert all(r["target"] == "benign" for r in cls)
    assert all(-1 <= float(r["random_probe_rank_r"]) <= 1 for r in cls)
    assert all(0 <= float(r[k]) <= 1 for r in cls for k in ("deletion_auc", "insertion_auc"))
    words = [r for r in rows if r["probe"] == "word"]
    assert all(r["true"] in ("BREAST", "AXILLA") and r["random_probe_rank_r"] == "" for r in words)
    maps = np.load(res.table.with_name(f"{cache.model}.maps.npz"))
    assert list(maps["probes"]) == ["class", "word"] and list(maps["relpaths"]) == list(ids)
    w, h = Image.open(data / ids[0]).size
    assert maps["original_0"].shape == (2, h, w) and maps["input_0"].shape == (2, 64, 64)
    assert res.figure.is_file() and len(list(res.panels.glob("*.png"))) == 2
    meta = json.loads(Image.open(res.figure).info["Description"])
    assert meta["rise"]["n_masks"] == 40 and meta["target"] == "benign"
    assert set(res.by_probe) == {"class", "word"}


def test_stage_bad_input(small, tiny_model, tmp_path):
    data, cache = small
    kw = dict(root=data, device="cpu")
    with pytest.raises(VlmprobeError, match="not a class of the 'class' probe; classes: normal, benign"):
        explain_cache(cache, RiseConfig(n_masks=8), target="cyst", **kw)
    with pytest.raises(VlmprobeError, match=r"No saved .site. probe .* `vlmprobe probe --label site`"):
        explain_cache(cache, RiseConfig(n_masks=8), labels=["site"], **kw)
    i = next(i for i, m in enumerate(cache.metadata["mask_paths"]) if m)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    mask = moved / cache.metadata["mask_paths"][i].split(";")[0]
    Image.open(mask).resize((17, 11)).save(mask)
    with pytest.raises(VlmprobeError, match=r"Mask .* is 17 x 11 but its image"):
        explain_cache(cache, RiseConfig(n_masks=8), ImageChoice(ids=(cache.relpaths[i],)),
                      **{**kw, "root": moved})


def test_a_bf16_cache_is_explained_in_bf16(shared_phantom, tiny_model, tmp_path):
    """RISE encodes in the cache's precision: the unmasked image's score is the probe's score of
    the cached bf16 embedding (an fp32 forward would give another one)."""
    from vlmprobe.extraction import extract

    path = extract(tiny_model, DATASET, root=shared_phantom, out=tmp_path / "caches",
                   device="cpu", num_workers=0, progress=False, precision="bf16").path
    cache = read_cache(path)
    run_probe([cache])
    probe = LinearProbe.load(probe_path(cache, "class"))
    ids = tuple(cache.relpaths[:2])
    res = explain_cache(cache, RiseConfig(n_masks=8, batch_size=8), ImageChoice(ids=ids),
                        root=shared_phantom, device="cpu", causal_steps=0)
    cached = probe.decision_function(cache.embeddings[:2])
    for i, r in enumerate(res.records):
        expected = cached[i, probe.class_names.index(r["target"])]
        assert abs(r["score"] - expected) <= 1e-3 * max(1.0, abs(expected))
    meta = json.loads(res.table.with_suffix(".json").read_text())
    assert meta["provenance"]["precision"] == "bf16"
