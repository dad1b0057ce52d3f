"""GPU benchmark (not a test; one prepared run of at most 8 minutes on a lent GPU): does decoding
starve the model, and does nvJPEG (``extract --fast-decode`` on a GPU) keep it busy?

For efficientnet_lite0 (real weights, fp32) and a ViT-B/16 with seeded random weights (timm
``vit_base_patch16_224``: real shapes, no download; bf16), at ``--batch-size`` on ``--n``
1024×768 q90 JPEGs (the recipe of ``benchmarks/extract.py``, each image from its own seed so
that all cores make the corpus), it prints:

- pure forward img/s: the model alone on pre-decoded images already on the GPU (embeddings
  copied back, as extraction does);
- end-to-end ``extract`` img/s, exact (PIL decoding in the workers the plan sizes) and
  ``--fast-decode`` (nvJPEG on the GPU), each with the GPU's utilisation (``nvidia-smi`` sampled
  every 100 ms while it ran: mean and median) and its profile (where the wall time went);
- the per-image cosine of the nvJPEG path's embeddings to the exact path's (min, p1, median;
  images below 0.999).

Each step runs only while the time budget (``--budget``, default 420 s) lasts, so the run ends
inside 8 minutes whatever it meets; a step that fails prints its error and the run goes on. The
last lines are ``<model>: end-to-end fast-decode img/s / pure forward img/s``.

    .venv/bin/python benchmarks/extract_gpu.py            # on the GPU machine
    .venv/bin/python benchmarks/extract_gpu.py --n 2000   # shorter
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from extract import DATASET, H, QUALITY, W, _commit, _loadavg, _rerun, make_corpus
from vlmprobe.cache.tools import compare_caches
from vlmprobe.data import load_dataset, read_image
from vlmprobe.encoders import load_encoder
from vlmprobe.extraction import encode, extract
from vlmprobe.extraction.batches import _channels_last
from vlmprobe.extraction.gpu_decode import gpu_decode_works
from vlmprobe.extraction.plan import usable_cores
from vlmprobe.extraction.profile import profile_lines

VIT = "vit_b16_random"
REGISTRY = f"""schema_version: 1
models:
  {VIT}:
    family: timm
    architecture: vit_base_patch16_224
    source: random
    seed: 0
    tap: pooled
    embed_dim: 768
    preprocess: {{image_size: 224, resize: shortest, resize_size: 248, interpolation: bicubic, stats: imagenet}}
    baseline: true
    licence: apache-2.0
    description: ViT-B/16 with seeded random weights, for the GPU extraction benchmark.
"""


class GpuUtilisation:
    """The GPU's utilisation (%), sampled every 100 ms while the block runs: ``nvidia-smi``,
    else ``torch.cuda.utilization`` (pynvml) on a thread; ``samples`` stays empty with neither."""

    def __init__(self, index: int):
        self.index, self.samples = index, []

    def __enter__(self):
        self.proc, self.stop = None, threading.Event()
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", str(self.index), "-lms", "100"], stdout=subprocess.PIPE, text=True)
        except OSError:
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while not self.stop.wait(0.1):
            try:
                self.samples.append(float(torch.cuda.utilization(self.index)))
            except Exception:  # noqa: BLE001 — no pynvml: no samples
                return

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            out = self.proc.communicate()[0]
            self.samples = [float(x) for x in out.split() if x.strip().isdigit()]
        else:
            self.stop.set()
            self.thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "GPU utilisation: not sampled (no nvidia-smi, no pynvml)"
        return (f"GPU utilisation: mean {np.mean(self.samples):.0f} %, median "
                f"{np.median(self.samples):.0f} % ({len(self.samples)} samples)")


class Budget:
    """Seconds left of ``total``; :meth:`allows` says whether a step fits, and prints when not."""

    def __init__(self, total: float):
        self.end = time.monotonic() + total

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, what: str, needs: float) -> bool:
        if self.left() >= needs:
            return True
        print(f"skipped {what}: {self.left():.0f} s of the budget left, about {needs:.0f} s needed")
        return False


def step(what: str, fn):
    """Run one measurement; a failure prints its error and the run goes on."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 — report and continue: the lent machine's time is short
        print(f"FAILED {what}:\n{traceback.format_exc()}")
        return None


def pure_forward(model: str, precision: str, files: list[Path], batch_size: int, n: int,
                 device: str) -> float:
    """img/s of the model alone: 256 images decoded by PIL and transformed, tiled to a batch on
    the GPU, ``n`` images' worth of batches, embeddings copied back; the first batch warms."""
    encoder = load_encoder(model, device)
    channels_last = _channels_last(encoder)  # as extract runs a conv net on a GPU
    base = torch.stack([encoder.transform_(read_image(f)) for f in files[:256]])
    reps = -(-batch_size // len(base))
    batch = base.repeat(reps, 1, 1, 1)[:batch_size].to(device)
    encode(encoder, batch, precision, channels_last)
    t0 = time.perf_counter()
    for _ in range(max(1, n // batch_size)):
        encode(encoder, batch, precision, channels_last)
    return max(1, n // batch_size) * batch_size / (time.perf_counter() - t0)


def end_to_end(model: str, precision: str, root: Path, out: Path, batch_size: int, fast: bool,
               device: str, index: int) -> tuple[float, Path]:
    load = _loadavg()
    with GpuUtilisation(index) as util:
        t0 = time.perf_counter()
        r = extract(model, DATASET, root=root, out=out, batch_size=batch_size, device=device,
                    precision=precision, fast_decode=fast, progress=False, force=True)
        wall = time.perf_counter() - t0
    name = "fast-decode (nvJPEG)" if fast else "exact (PIL in workers)"
    print(f"  end-to-end {name}: {wall:.1f} s, {r.n_images / wall:.0f} img/s "
          f"({r.n_images} images, {r.n_skipped} skipped); {util.summary()}; load average "
          f"before {load}, after {_loadavg()}")
    for line in profile_lines(r.profile):
        print("    " + line)
    return r.n_images / wall, r.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    ap.add_argument("--corpus", type=Path,
                    default=Path(tempfile.gettempdir()) / "vlmprobe-bench-extract-gpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    budget = Budget(args.budget)
    print(f"rerun: {_rerun()}  (commit {_commit()})")
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (benchmarks/extract.py: the CPU's)")
    index = torch.device(args.device).index or 0
    props = torch.cuda.get_device_properties(index)
    print(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB; cpu: {usable_cores()} "
          f"usable cores, load average {_loadavg()}; torch {torch.__version__}, torchvision "
          f"{__import__('torchvision').__version__}")
    print(f"nvJPEG: {gpu_decode_works(args.device) or 'works'}")
    registry = Path(tempfile.mkdtemp()) / "registry.yaml"
    registry.write_text(REGISTRY)
    os.environ["VLMPROBE_REGISTRY"] = str(registry)

    t0 = time.perf_counter()
    root = make_corpus(args.corpus / f"n{args.n}-s{args.seed}", args.n, args.seed,
                       processes=usable_cores())
    files = sorted(root.rglob("*.jpg"))
    print(f"corpus: {len(files)} JPEGs {W}x{H} q{QUALITY}, in {root} "
          f"({time.perf_counter() - t0:.0f} s)")
    len(load_dataset(DATASET, root))  # the listing is valid before any timing

    out = Path(tempfile.mkdtemp(prefix="vlmprobe-bench-gpu-"))
    summary = []
    for model, precision in (("efficientnet_lite0", "fp32"), (VIT, "bf16")):
        print(f"{model}, {precision}, batch {args.batch_size}:")
        pure = None
        if budget.allows(f"{model} pure forward", 20):
            pure = step(f"{model} pure forward", lambda: pure_forward(
                model, precision, files, args.batch_size, args.n, args.device))
            if pure:
                print(f"  pure forward: {pure:.0f} img/s")
        rates, paths = {}, {}
        for fast in (False, True):
            name = "fast-decode" if fast else "exact"
            if budget.allows(f"{model} end-to-end {name}", 60):
                got = step(f"{model} end-to-end {name}", lambda: end_to_end(
                    model, precision, root, out / model / name, args.batch_size, fast,
                    args.device, index))
                if got:
                    rates[name], paths[name] = got
        if len(paths) == 2:
            cmp = step("cosine", lambda: compare_caches(paths["exact"], paths["fast-decode"]))
            if cmp:
                c = cmp["cosine"]
                print(f"  nvJPEG path vs exact cosine: min {c['min']:.5f}  p1 {c['p01']:.5f}  "
                      f"median {c['median']:.5f}; images below 0.999: {cmp['n_below_0.999']}")
        summary.append((model, pure, rates))
    print(f"load average at end: {_loadavg()}; {args.budget - budget.left():.0f} s used")
    for model, pure, rates in summary:
        parts = [f"{name} {rate:.0f} img/s" for name, rate in rates.items()]
        ratio = (f"{rates['fast-decode'] / pure:.3f}" if pure and "fast-decode" in rates
                 else "n/a")
        print(f"{model}: pure forward {pure or 0:.0f} img/s, {', '.join(parts)}; "
              f"end-to-end fast-decode / pure forward: {ratio}")


if __name__ == "__main__":
    main()
