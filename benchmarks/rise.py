"""Benchmark (not a test): RISE's overhead over the encoder, and its memory at 448 px.

Speed: one image at efficientnet_lite0's input (224 x 224) through lite0 + a linear probe.
RISE's wall time for N masks is divided by N x the per-image forward time of the same encoder +
probe at the same batch size and thread count, timed in the same run on batches of the image
itself (half before, half after the RISE run, so machine load drifts hit both sides alike).
Target: ratio <= 1.15.

Memory: a fresh process runs RISE at 448 x 448 px with N=4096 masks through a cheap encoder
(average-pool to 8 x 8 + a random linear layer: the masking machinery's memory does not depend
on the encoder's cost) and reports the peak resident memory above the level after the model and
image are loaded (Linux VmHWM, reset through /proc/self/clear_refs). Target: <= 1 GB.

    .venv/bin/python benchmarks/rise.py [--n-masks 4096] [--batch-size 64]

The last line is ``ratio: <number>``.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from vlmprobe.rise import RiseConfig, rise_saliency

CHEAP_ENCODER = "avgpool8-linear (adaptive average pool to 8x8 -> random linear 192 -> 3)"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(n_masks: int, size: int, batch_size: int | None) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(3 * 8 * 8, 3)

    def score_fn(batch):
        return head(torch.nn.functional.adaptive_avg_pool2d(batch, 8).flatten(1))

    pixels = torch.randn(3, size, size)
    score_fn(pixels[None])  # warm up allocations of the model itself
    before = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        how = "VmHWM reset via /proc/self/clear_refs"
    except OSError:
        how = "VmHWM since process start (reset not permitted)"
    t = time.perf_counter()
    res = rise_saliency(score_fn, pixels, RiseConfig(n_masks=n_masks, batch_size=batch_size))
    wall = time.perf_counter() - t
    peak = _status_kb("VmHWM")
    print(f"memory: {size}x{size} px, N={n_masks}, batch {res.config['batch_size']}, encoder "
          f"{CHEAP_ENCODER}: RSS before {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
          f"additional {(peak - before) / 1024:.0f} MiB ({how}); RISE took {wall:.1f} s")


def speed(n_masks: int, batch_size: int) -> float:
    from vlmprobe.encoders import load_encoder
    from vlmprobe.probe import LinearProbe

    encoder = load_encoder("efficientnet_lite0", "cpu")
    rng = np.random.default_rng(0)
    probe = LinearProbe(np.zeros(1280), np.ones(1280), rng.standard_normal((3, 1280)) / 36,
                        np.zeros(3), ["a", "b", "c"])

    def score_fn(batch):
        return probe.decision_function(encoder.encode_images(batch))

    from PIL import Image
    try:
        from skimage import data
        image = Image.fromarray(data.astronaut())
    except ImportError:
        image = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
    pixels = encoder.transform_(image)
    batch = pixels.expand(batch_size, *pixels.shape).contiguous()  # the image itself, unmasked

    def forward(n):
        t = time.perf_counter()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                score_fn(batch[:min(batch_size, n - start)])
        return time.perf_counter() - t

    score_fn(batch)  # warm-up
    half = n_masks // 2
    t_before = forward(half)
    t = time.perf_counter()
    res = rise_saliency(score_fn, pixels, RiseConfig(n_masks=n_masks, batch_size=batch_size))
    t_rise = time.perf_counter() - t
    t_after = forward(n_masks - half)
    per_image = (t_before + t_after) / n_masks
    print(f"speed: efficientnet_lite0 at {tuple(pixels.shape[1:])}, batch {batch_size}, "
          f"{torch.get_num_threads()} threads: forward {1000 * per_image:.1f} ms/img "
          f"(encoder + probe on the image, {n_masks} images; {1000 * t_before / half:.1f} ms "
          f"before RISE, {1000 * t_after / (n_masks - half):.1f} ms after), RISE N={n_masks}: "
          f"{t_rise:.1f} s per image (split-half r {res.split_half_r.max():.2f})")
    return t_rise / (n_masks * per_image)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-masks", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--memory-size", type=int, default=448)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.n_masks, args.memory_size, args.batch_size)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}, Python {platform.python_version()}")
    child = subprocess.run([sys.executable, __file__, "--memory-child", "--n-masks",
                            str(args.n_masks), "--memory-size", str(args.memory_size),
                            "--batch-size", str(args.batch_size)],
                           capture_output=True, text=True, check=True)
    print(child.stdout.strip())
    ratio = speed(args.n_masks, args.batch_size)
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
