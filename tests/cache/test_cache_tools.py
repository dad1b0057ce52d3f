"""cache info / ls / compare on real caches of the tiny efficientnet_lite0 entry."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from extract_helpers import DATASET, MODEL
from vlmprobe.cache import read_cache
from vlmprobe.cache.tools import cache_info, compare_caches, list_caches
from vlmprobe.cache.chunks import WorkDir
from vlmprobe.cli import app
from vlmprobe.extraction import extract


@pytest.fixture
def caches(tiny_busi, tiny_model, tmp_path):
    (tiny_busi / "benign" / "benign (99).png").write_bytes(b"not an image")
    kw = dict(root=tiny_busi, batch_size=8, num_workers=0, progress=False)
    fp32 = extract(MODEL, DATASET, out=tmp_path / "fp32", **kw).path
    bf16 = extract(MODEL, DATASET, out=tmp_path / "bf16", precision="bf16", **kw).path
    return fp32, bf16


def test_info_reports_counts_failures_key_and_provenance(caches):
    info = cache_info(caches[0])
    c = read_cache(caches[0])
    assert info["n_embeddings"] == 30 and info["n_files"] == 31 and info["n_skipped"] == 1
    assert info["skipped"][0]["relpath"] == "benign/benign (99).png"
    assert info["class_counts"] == {"normal": 10, "benign": 10, "malignant": 10}
    assert info["cache_key"] == c.cache_key and info["precision"] == "fp32"
    assert info["batch_size"] == 8 and info["provenance"]["vlmprobe_version"]
    r = CliRunner().invoke(app, ["cache", "info", str(caches[0])])
    assert r.exit_code == 0 and c.cache_key in r.output and "benign (99).png" in r.output


def test_precision_is_part_of_the_key_and_compare_measures_its_effect(caches):
    fp32, bf16 = (read_cache(p) for p in caches)
    assert fp32.cache_key != bf16.cache_key and bf16.attrs["precision"] == "bf16"
    r = compare_caches(fp32, bf16)
    assert r["n_common"] == 30 and not r["bitwise_identical"]
    assert 0.9 < r["cosine"]["min"] < 1.0 and r["cosine"]["min"] <= r["cosine"]["median"]
    assert r["probe"] is None and "vlmprobe probe" in r["probe_note"]
    same = compare_caches(fp32, fp32)
    assert same["bitwise_identical"] and same["cosine"]["min"] == pytest.approx(1.0)


def test_compare_counts_changed_predictions_of_the_saved_probe(caches):
    from vlmprobe.probe import LinearProbe, probe_path

    a, b = read_cache(caches[0]), read_cache(caches[1])
    # A probe on the class direction, saved where `vlmprobe probe` saves it.
    d = a.embed_dim
    coef = np.stack([a.embeddings[a.labels == k].mean(0) - a.embeddings.mean(0) for k in range(3)])
    probe = LinearProbe(np.zeros(d), np.ones(d), coef, np.zeros(3), a.class_names, {})
    probe.save(probe_path(a, "class"))
    # Move B's embeddings of two images onto another class's mean: their predictions change.
    b.embeddings[:2] = a.embeddings[a.labels == 2].mean(0)
    r = compare_caches(a, b)
    expected = int((probe.predict(a.embeddings[:2]) != 2).sum())
    assert r["predictions_changed"] == expected and r["probe"].endswith(".npz")
    out = CliRunner().invoke(app, ["cache", "compare", str(caches[0]), str(caches[1]), "--json"])
    unmodified = compare_caches(caches[0], caches[1])["predictions_changed"]
    assert out.exit_code == 0 and json.loads(out.output)["predictions_changed"] == unmodified


def test_ls_lists_caches_and_interrupted_extractions(caches, tmp_path):
    work = WorkDir(tmp_path / "fp32" / DATASET / "other.h5")
    work.start({"cache_key": "k", "n": 31, "shard": [0, 1], "batch_size": 8})
    rows = {r["path"]: r for r in list_caches(tmp_path / "fp32")}
    assert rows[f"{DATASET}/{MODEL}.h5"]["n"] == 30
    assert rows[f"{DATASET}/other.h5"]["status"].startswith("interrupted: 0 of 4 chunks")
    r = CliRunner().invoke(app, ["cache", "ls", str(tmp_path / "bf16")])
    assert r.exit_code == 0 and "bf16" in r.output


def test_schema_1_caches_are_read_and_their_rerun_asks_for_force(caches, tiny_busi):
    import h5py

    from vlmprobe.validation import VlmprobeError

    with h5py.File(caches[0], "r+") as f:  # make it what vlmprobe wrote before schema 2
        f.attrs["schema_version"] = 1
        f.attrs["cache_key"] = "1" * 64  # schema 1 keys hashed neither schema 2 nor precision
        for k in ("embeddings_sha256", "precision", "batch_size", "shard"):
            del f.attrs[k]
    old = read_cache(caches[0])
    assert len(old.relpaths) == 30 and cache_info(caches[0])["precision"] == "fp32 (schema 1)"
    with pytest.raises(VlmprobeError, match="cache schema 1.*--force"):
        extract(MODEL, DATASET, root=tiny_busi, out=caches[0].parent.parent, batch_size=8,
                num_workers=0, progress=False)
