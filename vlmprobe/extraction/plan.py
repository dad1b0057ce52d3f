"""How an extraction uses the machine: which processes run the model, how many decode, at how
many threads each (:func:`choose_plan`).

On a CPU, decoding and the model share the cores, so a run cannot beat (forward CPU + decode
CPU) per image / cores, with the forward's CPU taken at one thread, where it is smallest
(benchmarks/RESULTS.md: efficientnet_lite0 22 ms/img at one thread against 30 ms of CPU at two,
whose OpenMP threads also spin at every barrier while a decode worker holds a core). A decode
worker beside a model in the main process either idles or takes a core from the model; so by
default each of ``cores`` DataLoader workers decodes *and* encodes its own batches at one
thread, the model's weights shared with the main process by fork (copy-on-write), and the main
process only writes chunks. A worker runs at one thread (a forked child must not start an
OpenMP pool), so where the batches to do or the machine's free memory leave most cores without
a worker, the model runs in this process at every core instead.

On a GPU the model runs in the main process and workers only prepare batches; their number is
chosen from the measured balance of a worker's time per image against the GPU's forward time per
image, so that the GPU never waits for a batch.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Plan:
    """``workers`` DataLoader processes (0: everything in this process); ``model_in_workers``:
    they run the model too (CPU); ``threads``: torch threads of each process that runs the
    model; ``prefetch``: batches queued per worker (None with no workers); ``why``: one line."""

    workers: int
    model_in_workers: bool
    threads: int
    prefetch: int | None
    why: str


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def can_fork_workers() -> bool:
    """Workers that run the model get it by fork (shared pages, no pickling of the weights):
    Linux only (macOS's fork is unsafe with system frameworks; Windows has none)."""
    return sys.platform.startswith("linux")


def available_memory() -> int | None:
    """Bytes the kernel could give without swapping (``MemAvailable``), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory_of(fn) -> int | None:
    """Bytes this process's resident memory peaked above its level before ``fn()`` (Linux:
    VmHWM reset through /proc/self/clear_refs), or None where that cannot be measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak := current resident size
        before = _status_kib("VmRSS")
    except OSError:
        return None
    fn()
    try:
        return max(0, _status_kib("VmHWM") - before) * 1024
    except OSError:
        return None


def _in_process(cores: int, why: str) -> Plan:
    return Plan(0, False, cores, None, f"{why}, {cores} thread(s)")


def choose_plan(device_type: str, batch_size: int, num_workers: int | None = None, *,
                n_batches: int | None = None, cores: int | None = None,
                fork_ok: bool | None = None,
                memory_free: int | None = None, batch_memory: int | None = None,
                worker_s: float | None = None, forward_s: float | None = None) -> Plan:
    """The plan for a run: ``num_workers`` (the user's ``--workers``) keeps the model in this
    process at torch's thread count beside that many decode workers; None chooses.

    CPU (``fork_ok``): one worker per core, each decoding and encoding its batches at one
    thread; capped so that ``batch_memory`` (one batch's forward at one thread, measured) per
    worker fits in half of ``memory_free``, and at ``n_batches``. A forked worker runs at one
    thread only: GNU OpenMP is not fork-safe, so a child whose parent has used a thread pool
    hangs in its first parallel region. Where the cap leaves fewer than half the cores a worker
    (or just one), everything runs in this process at every core instead. GPU:
    ``ceil(1.5 * worker_s / forward_s)`` workers, 1 to cores - 1, with ``worker_s`` a worker's
    seconds per image and ``forward_s`` the GPU's; unmeasured, cores - 1.
    """
    cores = usable_cores() if cores is None else cores
    fork_ok = can_fork_workers() if fork_ok is None else fork_ok
    if num_workers is not None:
        return Plan(num_workers, False, torch.get_num_threads(), 2 if num_workers else None,
                    f"--workers {num_workers}: the model here at {torch.get_num_threads()} "
                    f"thread(s), {num_workers} decode worker(s)")
    if device_type == "cpu":
        if cores < 2 or not fork_ok:
            why = "1 core" if cores < 2 else f"no fork on {sys.platform}"
            return _in_process(cores, f"{why}: decoding and the model in this process")
        workers = min(cores, n_batches or cores)
        memo = f", {workers} batch(es) to do" if workers < cores else ""
        if memory_free and batch_memory and memory_free / 2 // batch_memory < workers:
            workers = max(1, int(memory_free / 2 // batch_memory))
            memo = (f", capped by memory ({batch_memory / 2**20:.0f} MiB per batch of "
                    f"{batch_size}, {memory_free / 2**30:.1f} GiB free)")
        if 2 * workers < cores or workers == 1:  # most cores idle: they serve better as threads
            return _in_process(cores, f"decoding and the model in this process{memo}")
        return Plan(workers, True, 1, 2, f"{workers} worker(s) decoding and encoding their own "
                                         f"batches at 1 thread each on {cores} cores{memo}")
    most = max(1, cores - 1)
    if worker_s is None or not forward_s:
        workers, basis = most, "unmeasured"
    else:
        workers = max(1, min(most, math.ceil(1.5 * worker_s / forward_s)))
        basis = (f"a worker's {1000 * worker_s:.2f} ms/img against the forward's "
                 f"{1000 * forward_s:.2f} ms/img")
    prefetch = max(2, math.ceil(8 / workers))  # ≥ 8 batches queued: the GPU rides out jitter
    return Plan(workers, False, torch.get_num_threads(), prefetch,
                f"{workers} decode worker(s) for the {device_type} model ({basis}), "
                f"{prefetch} batches queued each")

