"""Helpers for the extraction tests: a fast registry entry and the extract command line.

``lite0_random_64`` is the registry's efficientnet_lite0 architecture with seeded random weights
at a 64-pixel input, added the way users add models ($VLMPROBE_REGISTRY), so subprocess tests
exercise the real load/transform/forward path at a fraction of the 224-pixel cost;
``vit_random_64`` (+ ``_cmp``: the same weights, another tap) does the same for a timm ViT.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

MODEL, DATASET, VIT = "lite0_random_64", "breastus", "vit_random_64"
TINY_REGISTRY = f"""schema_version: 1
models:
  {MODEL}:
    family: timm
    architecture: efficientnet_lite0
    source: random
    seed: 0
    tap: pooled
    embed_dim: 1280
    preprocess: {{image_size: 64, resize: shortest, resize_size: 72, interpolation: bicubic, stats: imagenet}}
    baseline: true
    licence: apache-2.0
    description: efficientnet_lite0 with seeded random weights at 64 px, for fast extraction tests.
  {VIT}:
    family: timm
    architecture: vit_tiny_patch16_224
    model_kwargs: {{img_size: 64, depth: 2}}
    source: random
    seed: 0
    tap: pooled
    embed_dim: 192
    preprocess: {{image_size: 64, resize: shortest, resize_size: 72, interpolation: bicubic, stats: imagenet}}
    licence: apache-2.0
    description: a 2-block ViT-Tiny with seeded random weights at 64 px, for tap tests.
  {VIT}_cmp:
    family: timm
    architecture: vit_tiny_patch16_224
    model_kwargs: {{img_size: 64, depth: 2}}
    source: random
    seed: 0
    tap: cls_mean_patch
    embed_dim: 384
    preprocess: {{image_size: 64, resize: shortest, resize_size: 72, interpolation: bicubic, stats: imagenet}}
    licence: apache-2.0
    description: the same ViT with Virchow's tap (CLS + mean of patch tokens).
"""


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    reg = tmp_path / "tiny_registry.yaml"
    reg.write_text(TINY_REGISTRY)
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(reg))  # inherited by subprocesses
    # One intra-op thread: on a shared, oversubscribed CPU OpenMP's spinning threads make every
    # forward seconds slower; the tests check bytes and behaviour, not speed.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MODEL
    torch.set_num_threads(threads)


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
    from vlmprobe.chunks import WorkDir

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
