"""Helpers for the extraction tests: the extract command line, and killing it mid-run.

The fast registry entries they run (``lite0_random_64``, ``vit_random_64``) and the ``tiny_model``
fixture that registers them live in conftest.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny_models import DATASET, MODEL, VIT  # noqa: F401  (re-exported for the tests)


def extract_cmd(root: Path, out: Path, batch_size: int, *extra: str,
                model: str = MODEL) -> list[str]:
    return [sys.executable, "-m", "vlmprobe", "extract", "--model", model, "--dataset", DATASET,
            "--root", str(root), "--out", str(out), "--batch-size", str(batch_size),
            "--workers", "0", *extra]


def target(out: Path, model: str = MODEL) -> Path:
    return out / DATASET / f"{model}.h5"


def run_and_kill(cmd: list[str], cache: Path, after_chunks: int) -> None:
    """Start an extract command and SIGKILL it once ``after_chunks`` chunk files of ``cache``
    exist; the cache itself must not exist yet."""
    from vlmprobe.cache.chunks import WorkDir

    work = WorkDir(cache)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(work.done()) < after_chunks:
            assert p.poll() is None, p.stderr.read().decode()
            assert time.monotonic() < deadline, "extract made no progress"
            time.sleep(0.001)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not cache.exists()
