"""How extraction uses the machine: the plan's selection logic, the default plan's bytes against
the model in the main process, the profile's split, the chunk writer's errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from extract_helpers import DATASET, MODEL
from vlmprobe.cache import read_cache
from vlmprobe.cache.chunks import Chunk, ChunkWriter, WorkDir
from vlmprobe.extraction import extract
from vlmprobe.extraction.plan import choose_plan
from vlmprobe.validation import VlmprobeError

GiB = 2**30
REAL = "efficientnet_lite0"  # the embedded pretrained weights


def test_cpu_plan_runs_the_model_in_one_worker_per_core_at_one_thread():
    plan = choose_plan("cpu", 32, cores=2, fork_ok=True, n_batches=63)
    assert (plan.workers, plan.model_in_workers, plan.threads, plan.prefetch) == (2, True, 1, 2)
    # fewer batches than cores: a worker each, the rest idle while at least half the cores work
    five = choose_plan("cpu", 32, cores=8, fork_ok=True, n_batches=5)
    assert (five.workers, five.threads) == (5, 1) and "5 batch(es) to do" in five.why
    roomy = choose_plan("cpu", 32, cores=8, fork_ok=True, n_batches=100, memory_free=64 * GiB,
                        batch_memory=GiB)
    assert (roomy.workers, roomy.threads) == (8, 1)


@pytest.mark.parametrize("kwargs, why", [
    (dict(cores=2, n_batches=1), "1 batch(es) to do"),     # one batch: one worker is no gain
    (dict(cores=8, n_batches=3), "3 batch(es) to do"),     # most cores would idle
    # a batch's forward needs 1 GiB: 6 GiB free holds 3 at half the free memory
    (dict(cores=8, n_batches=100, memory_free=6 * GiB, batch_memory=GiB), "capped by memory"),
    (dict(cores=8, memory_free=GiB, batch_memory=GiB), "capped by memory")])
def test_cpu_plan_with_most_cores_idle_runs_in_this_process_at_every_core(kwargs, why):
    plan = choose_plan("cpu", 32, fork_ok=True, **kwargs)
    assert (plan.workers, plan.model_in_workers, plan.threads) == (0, False, kwargs["cores"])
    assert why in plan.why


def test_a_forked_worker_that_runs_the_model_never_gets_more_than_one_thread():
    """GNU OpenMP is not fork-safe: such a worker hangs in its first parallel region."""
    for cores in (2, 3, 8, 16):
        for n_batches in (1, 2, 5, 9, 100):
            for memory_free in (None, GiB, 6 * GiB):
                plan = choose_plan("cpu", 32, cores=cores, fork_ok=True, n_batches=n_batches,
                                   memory_free=memory_free, batch_memory=GiB // 2)
                assert plan.threads == 1 or not plan.model_in_workers, plan


def test_cpu_plan_without_fork_or_a_second_core_keeps_everything_in_this_process():
    for plan in (choose_plan("cpu", 32, cores=1, fork_ok=True),
                 choose_plan("cpu", 32, cores=4, fork_ok=False)):
        assert plan.workers == 0 and not plan.model_in_workers and plan.prefetch is None
    assert choose_plan("cpu", 32, cores=4, fork_ok=False).threads == 4


def test_workers_given_keep_the_model_here_beside_decode_workers():
    plan = choose_plan("cpu", 32, 3, cores=16, fork_ok=True)
    assert (plan.workers, plan.model_in_workers, plan.threads) == (3, False,
                                                                   torch.get_num_threads())
    assert choose_plan("cuda", 32, 0, cores=16).prefetch is None


def test_gpu_plan_sizes_workers_from_the_measured_balance():
    # PIL decode of a large JPEG (12 ms) against a 0.5 ms forward: every core but this one
    assert choose_plan("cuda", 256, cores=16, worker_s=0.012, forward_s=0.0005).workers == 15
    # 2 ms of decoding against 1 ms of forward: 3 workers (1.5x margin)
    balanced = choose_plan("cuda", 256, cores=16, worker_s=0.002, forward_s=0.001)
    assert balanced.workers == 3 and "2.00 ms/img" in balanced.why
    # nvJPEG: a worker only reads the file
    light = choose_plan("cuda", 256, cores=16, worker_s=0.0001, forward_s=0.0005)
    assert light.workers == 1 and light.workers * light.prefetch >= 8
    assert choose_plan("cuda", 256, cores=16).workers == 15  # unmeasured: all but this core
    assert not light.model_in_workers and choose_plan("cuda", 256, cores=1).workers == 1


@pytest.mark.parametrize("batch_size", [64, 4])  # one batch (fewer than the cores), eight
def test_the_default_plan_finishes_at_the_machines_own_thread_count(tiny_busi, tiny_model,
                                                                   tmp_path, batch_size):
    """The command as users run it, OpenMP at its default thread count (the test session pins
    one thread): a forked worker given more than one thread hung in its first parallel region
    once the parent had used its thread pool (loading real weights does), so a one-batch
    dataset never finished."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "vlmprobe", "extract", "--model", REAL, "--dataset", DATASET,
           "--root", str(tiny_busi), "--out", str(tmp_path), "--batch-size", str(batch_size),
           "--profile"]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`vlmprobe extract --batch-size {batch_size}` hung at default threads")
    assert done.returncode == 0, done.stderr[-2000:]
    cache = read_cache(next(tmp_path.rglob("*.h5")))
    here = extract(REAL, DATASET, root=tiny_busi, out=tmp_path / "here", num_workers=0,
                   batch_size=batch_size, progress=False)
    assert cache.relpaths == read_cache(here.path).relpaths
    assert np.allclose(cache.embeddings, read_cache(here.path).embeddings, atol=1e-5)


def test_peak_memory_of_sees_a_temporary_allocation():
    """In a fresh process, as a command starts: a long-lived one (this test session) may hold
    freed pages still resident, which serve the allocation without a new peak."""
    code = ("import numpy as np; from vlmprobe.extraction.plan import peak_memory_of; "
            "print(peak_memory_of(lambda: np.ones(50_000_000).sum()))")  # 400 MB, then freed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()[-1]
    if out == "None":
        pytest.skip("no /proc/self/clear_refs here")
    assert 350e6 < int(out) < 1e9


def test_default_plan_gives_the_bytes_of_the_model_at_one_thread(tiny_busi, tiny_model,
                                                                  tmp_path):
    """Workers that encode their own batches (the CPU default) write the cache that the model at
    one thread in this process writes, byte for byte, whatever this process's thread count: a
    conv net's bytes depend on the thread count (oneDNN splits its reductions by thread), so the
    default's one thread per worker also keeps caches alike across machines."""
    from vlmprobe.devices import torch_threads

    (tiny_busi / "benign" / "benign (99).png").write_bytes(b"not an image")
    kw = dict(root=tiny_busi, batch_size=4, progress=False)
    here = extract(MODEL, DATASET, out=tmp_path / "here", num_workers=0, **kw)
    with torch_threads(2):
        default = extract(MODEL, DATASET, out=tmp_path / "default", **kw)
    a, b = read_cache(here.path), read_cache(default.path)
    assert a.cache_key == b.cache_key and a.relpaths == b.relpaths and a.skipped == b.skipped
    assert a.embeddings.tobytes() == b.embeddings.tobytes()
    if "decoding and encoding" in default.profile["plan"]:  # not on a 1-core machine
        workers = default.profile["workers_s"]
        assert workers["batches"] == 8 and workers["forward"] > 0 and workers["decode"] > 0
        assert default.profile["phases_s"]["forward"] < workers["forward"]  # not done here
    assert here.profile["workers_s"]["forward"] == 0 and here.profile["phases_s"]["forward"] > 0


def test_the_profile_splits_the_wall_time(tiny_busi, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from vlmprobe.cli import app

    r = extract(MODEL, DATASET, root=tiny_busi, out=tmp_path, batch_size=8, num_workers=0,
                progress=False)
    phases = r.profile["phases_s"]
    assert set(phases) >= {"fingerprint", "model load", "setup", "waiting for batches",
                           "forward", "chunk writes", "consolidation", "other"}
    assert all(s >= 0 for s in phases.values()) and phases["forward"] > 0
    # the phases and what nothing claims add up to the wall time (fingerprint ∥ model load)
    assert sum(phases.values()) - r.profile["overlap_s"] == pytest.approx(r.profile["total_s"])
    assert r.profile["workers_s"]["batches"] == 4  # 30 readable images in batches of 8
    again = extract(MODEL, DATASET, root=tiny_busi, out=tmp_path, progress=False)
    assert again.status == "up to date" and again.profile["phases_s"]["forward"] == 0
    res = CliRunner().invoke(app, ["extract", "--model", MODEL, "--dataset", DATASET, "--root",
                                   str(tiny_busi), "--out", str(tmp_path / "cli"), "--workers",
                                   "0", "--profile"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for phase in ("fingerprint", "model load", "waiting for batches", "forward", "chunk writes",
                  "consolidation"):
        assert phase in res.output
    assert "profile:" in res.output and "--workers 0" in res.output


def test_chunk_writer_writes_on_its_thread_and_raises_a_failed_write(tmp_path):
    work = WorkDir(tmp_path / "c.h5")
    work.start({"cache_key": "k", "n": 8, "shard": [0, 1], "batch_size": 4})
    chunk = Chunk(np.arange(4), np.ones((4, 3), np.float32), np.array([], np.int64), [])
    with ChunkWriter(work) as writer:
        writer.write(0, chunk)
    assert work.done() == {0} and work.read(0).embeddings.sum() == 12
    work.clear()  # its folder gone: the next write cannot land
    writer = ChunkWriter(work)
    # the failure surfaces at this write when the thread was quick, else at close
    with pytest.raises(VlmprobeError, match="Could not write .*chunk-000001.bin"):
        writer.write(1, chunk)
        writer.close()
    writer.pool.shutdown(wait=True)
