"""Two extract processes on one cache: the second says clearly that the first holds it (and
which process), the first finishes undisturbed; a reader meanwhile never sees a half-written
cache (the cache file appears only whole, by rename)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from vlmprobe.cache import read_cache
from vlmprobe.cache.chunks import WorkDir

from extract_helpers import DATASET, MODEL, extract_cmd, target

pytestmark = pytest.mark.slow


def test_a_second_extract_on_the_same_cache_names_the_first_and_leaves_it_alone(
        tiny_busi, tiny_model, tmp_path):
    out = tmp_path / "out"
    cache = target(out)
    first = subprocess.Popen(extract_cmd(tiny_busi, out, 2), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    work, deadline = WorkDir(cache), time.monotonic() + 120
    while not work.done():  # the first holds the lock and has written a chunk
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGSTOP)  # paused mid-run, lock held: no race with start-up
    try:
        second = subprocess.run(extract_cmd(tiny_busi, out, 2), capture_output=True, text=True)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    message = " ".join(second.stderr.split())
    assert f"Another vlmprobe process (pid {first.pid}" in message and "lock file" in message
    assert "Traceback" not in second.stdout + second.stderr
    while first.poll() is None:  # a reader polling meanwhile sees no cache or a whole one
        if cache.exists():
            read_cache(cache)
        time.sleep(0.01)
    assert first.returncode == 0, first.stderr.read()
    done = read_cache(cache)
    assert len(done.relpaths) == 30 and done.model == MODEL and done.dataset == DATASET
