"""Sharded extraction: two processes with torchrun's RANK/WORLD_SIZE, merged = one process's cache."""
from __future__ import annotations

import os
import subprocess

import pytest

from extract_helpers import DATASET, MODEL, extract_cmd, target
from vlmprobe.cache import read_cache
from vlmprobe.extraction import extract, merge_shards
from vlmprobe.extraction.shards import shard_path
from vlmprobe.validation import VlmprobeError

BS = 4


@pytest.fixture
def busi(tiny_busi, tiny_model):
    (tiny_busi / "malignant" / "malignant (42).png").write_bytes(b"broken")
    return tiny_busi


@pytest.mark.slow
def test_two_ranks_write_shards_and_the_merge_equals_one_process_bitwise(busi, tmp_path):
    single = read_cache(extract(MODEL, DATASET, root=busi, out=tmp_path / "one", batch_size=BS,
                                num_workers=0, progress=False).path)
    out = tmp_path / "two"
    procs = [subprocess.Popen(extract_cmd(busi, out, BS), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2",
                                   "LOCAL_RANK": str(r)}) for r in range(2)]
    outputs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum("merged into" in stdout for stdout, _ in outputs) == 1  # the last to finish merged
    merged = read_cache(target(out))
    assert merged.embeddings.tobytes() == single.embeddings.tobytes()
    assert merged.relpaths == single.relpaths and merged.skipped == single.skipped
    assert (merged.labels == single.labels).all() and merged.metadata == single.metadata
    assert merged.cache_key == single.cache_key and merged.shard == ""
    assert not any(shard_path(target(out), i, 2).exists() for i in range(2))


def test_merge_checks_completeness_and_keys(busi, tmp_path):
    kw = dict(root=busi, batch_size=BS, num_workers=0, progress=False)
    r0 = extract(MODEL, DATASET, out=tmp_path / "a", shard="0/3", **kw)
    assert r0.status == "shard written" and r0.merged is None
    s0 = read_cache(r0.path)
    assert s0.shard == "0/3" and len(s0.relpaths) < 31  # batches 0, 3, 6
    with pytest.raises(VlmprobeError, match=r"missing \[1, 2\].*--shard i/3"):
        merge_shards([r0.path])
    other = extract(MODEL, DATASET, out=tmp_path / "b", shard="1/3", precision="bf16", **kw)
    with pytest.raises(VlmprobeError, match="made from other inputs"):
        merge_shards([r0.path, other.path])
    r1 = extract(MODEL, DATASET, out=tmp_path / "a", shard="1/3", **kw)
    r2 = extract(MODEL, DATASET, out=tmp_path / "a", shard="2/3", **kw)
    assert r1.merged is None and r2.merged == target(tmp_path / "a")
    assert len(read_cache(r2.merged).relpaths) == 30
    with pytest.raises(VlmprobeError, match="expected i/n"):
        extract(MODEL, DATASET, out=tmp_path / "c", shard="1of3", **kw)


def test_cli_shard_option_and_merge_command(busi, tmp_path):
    from typer.testing import CliRunner

    from vlmprobe.cli import app

    base = ["extract", "--model", MODEL, "--dataset", DATASET, "--root", str(busi), "--out",
            str(tmp_path), "--workers", "0"]
    r = CliRunner().invoke(app, base + ["--batch-size", "4", "--shard", "1/2"])
    assert r.exit_code == 0, r.output
    one = shard_path(target(tmp_path), 1, 2)
    assert read_cache(one).shard == "1/2"
    r = CliRunner().invoke(app, ["cache", "merge", str(one)])
    assert isinstance(r.exception, VlmprobeError) and "missing [0]" in str(r.exception)
    r = CliRunner().invoke(app, base + ["--batch-size", "many"])
    assert isinstance(r.exception, VlmprobeError) and "positive integer or 'auto'" in str(r.exception)
