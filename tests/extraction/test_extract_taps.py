"""Several taps in one forward pass (``extract --tap``), stored beside the entry's own tap."""
from __future__ import annotations

import subprocess

import h5py
import pytest

from extract_helpers import DATASET, VIT, extract_cmd, run_and_kill, target
from vlmprobe.cache import read_cache
from vlmprobe.cache.tools import cache_info
from vlmprobe.extraction import extract
from vlmprobe.validation import VlmprobeError

CMP = "cls_mean_patch"


def _run(model, root, out, **kw):
    return extract(model, DATASET, root=root, out=out, batch_size=4, num_workers=0,
                   progress=False, **kw)


def test_each_tap_of_one_pass_equals_its_single_tap_extraction(tiny_busi, tiny_model, tmp_path):
    multi = _run(VIT, tiny_busi, tmp_path / "multi", taps=f"pooled,{CMP}")
    both = read_cache(multi.path)
    with h5py.File(multi.path) as f:
        assert f.attrs["schema_version"] == 3 and list(f["taps"]) == [CMP]
    assert both.tap == "pooled" and list(both.taps) == [CMP] and both.embed_dim == 192
    assert cache_info(multi.path)["further_taps"] == {CMP: 384}
    single = read_cache(_run(VIT, tiny_busi, tmp_path / "single").path)
    assert single.taps == {} and single.tap == "pooled"
    assert single.embeddings.tobytes() == both.embeddings.tobytes()  # bitwise
    # the same weights with the other tap as the entry's own, extracted alone
    alone = read_cache(_run(f"{VIT}_cmp", tiny_busi, tmp_path / "cmp").path)
    assert alone.embeddings.shape == (len(both.relpaths), 384)
    assert alone.embeddings.tobytes() == both.taps[CMP].tobytes()
    picked = read_cache(multi.path, tap=CMP)  # what probe/umap get with --tap
    assert picked.tap == CMP and picked.embed_dim == 384
    assert picked.embeddings.tobytes() == alone.embeddings.tobytes()
    assert picked.relpaths == single.relpaths
    with pytest.raises(VlmprobeError, match="no tap 'mean_tokens'.*holds pooled, cls_mean_patch"):
        read_cache(multi.path, tap="mean_tokens")
    # the taps are part of the key: same request is up to date, another is refused with why
    assert _run(VIT, tiny_busi, tmp_path / "multi", taps=[CMP]).status == "up to date"
    assert single.cache_key != both.cache_key
    with pytest.raises(VlmprobeError, match=r"further taps \['cls_mean_patch'\] -> none"):
        _run(VIT, tiny_busi, tmp_path / "multi")
    with pytest.raises(VlmprobeError, match=r"tap\(s\) nope unknown; valid: pooled, cls_mean_patch"):
        _run(VIT, tiny_busi, tmp_path / "bad", taps="nope")
    with h5py.File(multi.path, "r+") as f:  # a damaged tap is caught by its checksum
        f["taps"][CMP][0, 0] += 1.0
    with pytest.raises(VlmprobeError, match="corrupt: its /taps/cls_mean_patch embeddings"):
        read_cache(multi.path)


def test_shards_with_taps_merge_into_the_single_process_cache(tiny_busi, tiny_model, tmp_path):
    whole = read_cache(_run(VIT, tiny_busi, tmp_path / "whole", taps=CMP).path)
    for i in range(2):
        r = _run(VIT, tiny_busi, tmp_path / "sharded", taps=CMP, shard=f"{i}/2")
    merged = read_cache(r.merged)
    assert merged.relpaths == whole.relpaths
    assert merged.embeddings.tobytes() == whole.embeddings.tobytes()
    assert merged.taps[CMP].tobytes() == whole.taps[CMP].tobytes()


@pytest.mark.slow
def test_sigkill_with_taps_then_rerun_is_bitwise_identical(tiny_busi, tiny_model, tmp_path):
    ref = read_cache(extract(VIT, DATASET, root=tiny_busi, out=tmp_path / "ref", batch_size=2,
                             num_workers=0, progress=False, taps=CMP).path)
    out = tmp_path / "out"
    cmd = extract_cmd(tiny_busi, out, 2, "--tap", CMP, model=VIT)
    run_and_kill(cmd, target(out, VIT), after_chunks=3)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Resuming:" in done.stderr
    again = read_cache(target(out, VIT))
    assert again.cache_key == ref.cache_key and again.relpaths == ref.relpaths
    assert again.embeddings.tobytes() == ref.embeddings.tobytes()
    assert again.taps[CMP].tobytes() == ref.taps[CMP].tobytes()


@pytest.mark.slow  # ~1 min: UMAP's numba compile and a probe on this 2-core machine
def test_probe_and_umap_pick_a_tap(tiny_busi, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from vlmprobe.cli import app

    path = _run(VIT, tiny_busi, tmp_path / "c", taps=CMP).path

    def run(*args):
        r = CliRunner().invoke(app, [*args, str(path), "--out", str(tmp_path / "o")],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output

    run("probe", "--tap", "all", "--solver", "fast", "--repeats", "1", "--t-grid", "1",
        "--bootstrap", "10")
    probes = tmp_path / "o" / DATASET / "probe"
    assert {p.name for p in probes.glob("*.json")} == {f"{VIT}.json", f"{VIT}@{CMP}.json"}
    assert f"{VIT}@{CMP}" in (tmp_path / "o" / "probe_results.t-grid-1.n-bootstrap-10.csv").read_text()
    run("umap", "--tap", CMP, "--n-neighbors", "5", "--min-dist", "0.1")
    maps = list((tmp_path / "o" / DATASET / "umap").glob("*.npz"))
    assert [p.name for p in maps] == [f"{VIT}@{CMP}.cosine-nn5-md0.1-seed0.npz"]
    run("rise", "--tap", CMP, "--root", str(tiny_busi), "--n-masks", "8", "--images", "1",
        "--causal-steps", "0", "--device", "cpu")  # the encoder's further tap, through its probe
    assert sorted(p.name for p in (tmp_path / "o" / DATASET / "rise").glob("*.csv")) == [
        f"{VIT}@{CMP}.csv"]


@pytest.mark.slow  # ~15 s: five loads of the DINOv2 fixture
def test_transformers_taps_come_from_one_pass_and_equal_single_tap_encoders(tmp_path,
                                                                            monkeypatch):
    import dataclasses

    import torch
    from hub_fixtures import sample_images, use_hub_cache, write_dinov2_repo

    from vlmprobe.encoders import load_encoder
    from vlmprobe.registry import get_model_entry

    use_hub_cache(monkeypatch, tmp_path / "hub")
    fx = write_dinov2_repo(tmp_path / "hub", "facebook/dinov2-large", 256, 224)
    entry = dataclasses.replace(get_model_entry("dinov2"), embed_dim=fx.tap_dim)
    enc = load_encoder(entry, "cpu")
    x = torch.stack([enc.transform_(im) for im in list(sample_images().values())[:2]])
    passes = []
    enc.model_.register_forward_hook(lambda *_: passes.append(1))
    taps = ["cls", "pooler_output", "mean_tokens", "mean_patch"]
    together = enc.encode_taps(x, taps)
    assert len(passes) == 1
    for t in taps:
        alone = load_encoder(dataclasses.replace(entry, tap=t), "cpu").encode_images(x)
        assert torch.equal(alone, together[t]), t
    with pytest.raises(VlmprobeError, match="one tap per forward pass"):
        enc.encode_taps(x, ["cls", "image_embeds"])  # another call, not the same pass


def test_a_schema_2_cache_stays_valid(tiny_busi, tiny_model, tmp_path):
    """v3 only added the optional /taps group: a one-tap cache written as v2 is still up to date."""
    r = _run(VIT, tiny_busi, tmp_path)
    with h5py.File(r.path, "r+") as f:
        assert "taps" not in f
        f.attrs["schema_version"] = 2
    again = _run(VIT, tiny_busi, tmp_path)
    assert again.status == "up to date" and read_cache(again.path).tap == "pooled"
