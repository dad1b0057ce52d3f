"""Crash safety of extraction: real subprocesses killed with SIGKILL, then the same command."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmprobe.cache import read_cache
from vlmprobe.cache.chunks import WorkDir, WriterLock, decode_chunk
from vlmprobe.extraction import extract
from vlmprobe.validation import VlmprobeError

from extract_helpers import DATASET, MODEL, extract_cmd
from extract_helpers import run_and_kill as kill_after, target as _target

BS = 2  # 31 samples -> 16 chunks


def _cmd(root: Path, out: Path) -> list[str]:
    return extract_cmd(root, out, BS)


def run_and_kill(root: Path, out: Path, after_chunks: int) -> None:
    """Start the extract command and SIGKILL it once ``after_chunks`` chunk files exist."""
    kill_after(_cmd(root, out), _target(out), after_chunks)


@pytest.fixture
def busi(tiny_busi, tiny_model):
    (tiny_busi / "benign" / "benign (99).png").write_bytes(b"not an image")  # a skipped file too
    return tiny_busi


@pytest.fixture
def reference(busi, tmp_path):
    r = extract(MODEL, DATASET, root=busi, out=tmp_path / "ref", batch_size=BS, num_workers=0,
                progress=False)
    return read_cache(r.path)


def assert_same_cache(a, b):
    assert a.relpaths == b.relpaths and a.skipped == b.skipped and a.cache_key == b.cache_key
    assert a.embeddings.tobytes() == b.embeddings.tobytes()  # bitwise
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.metadata == b.metadata


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_is_bitwise_identical(busi, reference, tmp_path):
    out = tmp_path / "out"
    work = WorkDir(_target(out))
    run_and_kill(busi, out, after_chunks=1)
    first = sorted(work.done())
    run_and_kill(busi, out, after_chunks=len(first) + 4)
    assert set(first) <= work.done()  # the second run kept the first run's chunks
    # A chunk damaged on disk is detected, named and recomputed.
    damaged = work.chunk_path(first[0])
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    done = subprocess.run(_cmd(busi, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Resuming" in done.stderr and "corrupt" in done.stderr and damaged.name in done.stderr
    assert_same_cache(read_cache(_target(out)), reference)
    assert not work.path.exists() and not WriterLock(_target(out)).path.exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_says_where_to_resume_and_the_rerun_is_bitwise_identical(busi, reference, workers,
                                                                         tmp_path):
    """Ctrl-C as a terminal sends it, to the whole foreground process group: with decode workers
    (``--workers 2``) they are interrupted too, and the run still ends with the resume hint."""
    import signal
    import time

    from vlmprobe.cli import RESUME_HINT

    out = tmp_path / "out"
    work = WorkDir(_target(out))
    cmd = [*_cmd(busi, out), "--workers", workers]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + 120
    while len(work.done()) < 3:
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
        time.sleep(0.002)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate()
    assert p.returncode == 130 and RESUME_HINT in err and "Traceback" not in err, err
    assert not _target(out).exists() and len(work.done()) >= 3
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and "Resuming" in done.stderr, done.stderr
    assert_same_cache(read_cache(_target(out)), reference)


def test_a_live_writer_lock_refuses_a_second_writer_and_a_dead_one_is_taken_over(busi, tmp_path):
    out = tmp_path / "out"
    lock = WriterLock(_target(out)).acquire()  # held by this (live) process
    try:
        with pytest.raises(VlmprobeError, match=f"pid {os.getpid()}.*{lock.path.name}"):
            extract(MODEL, DATASET, root=busi, out=out, batch_size=BS, num_workers=0,
                    progress=False)
    finally:
        lock.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.path.write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}", "since": 0}}')
    r = extract(MODEL, DATASET, root=busi, out=out, batch_size=BS, num_workers=0, progress=False)
    assert r.status == "written" and not lock.path.exists()


def test_chunk_and_cache_checksums_name_the_damaged_file(reference, tmp_path):
    import h5py

    from vlmprobe.cache.chunks import Chunk

    work = WorkDir(tmp_path / "c.h5")
    work.start({"cache_key": "k", "n": 8, "shard": [0, 1], "batch_size": 4})
    work.write(0, Chunk(np.arange(4), np.ones((4, 3), np.float32), np.array([], np.int64), []))
    assert decode_chunk(work.chunk_path(0)).embeddings.sum() == 12
    raw = bytearray(work.chunk_path(0).read_bytes())
    raw[-40] ^= 1
    work.chunk_path(0).write_bytes(bytes(raw))
    with pytest.raises(VlmprobeError, match="chunk-000000.bin is corrupt"):
        decode_chunk(work.chunk_path(0))
    # A cache whose embeddings were altered after writing fails its checksum.
    damaged = tmp_path / "damaged.h5"
    shutil.copy(reference.path, damaged)
    with h5py.File(damaged, "r+") as f:
        f["embeddings"][0, 0] += 1.0
    with pytest.raises(VlmprobeError, match="damaged.h5 is corrupt"):
        read_cache(damaged)


def _limit_file_size():
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # chunks fit, the cache not


@pytest.mark.slow
def test_write_failure_is_a_clear_error_and_keeps_the_chunks(busi, reference, tmp_path):
    out = tmp_path / "out"
    failed = subprocess.run(_cmd(busi, out), capture_output=True, text=True,
                            preexec_fn=_limit_file_size)
    assert failed.returncode != 0
    assert "Could not write cache" in failed.stderr and "file-size limit" in failed.stderr
    work = WorkDir(_target(out))
    assert len(work.done()) == 16 and all(decode_chunk(work.chunk_path(k)) for k in work.done())
    r = extract(MODEL, DATASET, root=busi, out=out, batch_size=BS, num_workers=0, progress=False)
    assert_same_cache(read_cache(r.path), reference)


def _deny_writes(path: Path) -> bool:
    """Make ``path`` unwritable here (chmod, or chattr +i as root); False if impossible."""
    if os.geteuid() != 0:
        path.chmod(0o500)
        return True
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def _allow_writes(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o700)
    else:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.slow
def test_permission_denied_mid_run_is_a_clear_error_and_keeps_the_chunks(busi, reference, tmp_path):
    out = tmp_path / "out"
    target = _target(out)
    run_and_kill(busi, out, after_chunks=2)
    work = WorkDir(target)
    before = {k: work.chunk_path(k).read_bytes() for k in work.done()}
    if not _deny_writes(work.path):
        pytest.skip("cannot make a directory unwritable here (root without chattr)")
    try:
        with pytest.raises(VlmprobeError, match=f"Could not write .*{work.path.name}.*(permission|"
                                                "not permitted)"):
            extract(MODEL, DATASET, root=busi, out=out, batch_size=BS, num_workers=0,
                    progress=False)
    finally:
        _allow_writes(work.path)
    assert {k: work.chunk_path(k).read_bytes() for k in work.done()} == before
    r = extract(MODEL, DATASET, root=busi, out=out, batch_size=BS, num_workers=0, progress=False)
    assert_same_cache(read_cache(r.path), reference)
