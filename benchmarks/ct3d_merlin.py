"""Benchmark (not a test, not run in CI): the study's question on real medical CT weights.

Does a CT vision-language image tower (Merlin's I3ResNet-152: ``merlin``, and Astra's tower of
the same architecture, ``astra``) separate the ct3d phantom's lesion class better than its own
random twin and than a 2-D ImageNet encoder read slice-wise (efficientnet_lite0 on every axial
slice, the mean of a volume's slice embeddings)? The paper's linear probe on each, with its
bootstrap CIs and the paired tests between models (same test volumes, same resamples).

Each 3-D model is extracted in a subprocess of its own, so its wall time per volume and peak
memory (ru_maxrss) are its own; the load average is printed beside them (the CPU may be shared).
A model that cannot load here (merlin: its shard packages p2/p3 were not on PyPI) is skipped
with the reason ``vlmprobe models --check`` gives.

    .venv/bin/python benchmarks/ct3d_merlin.py                 # 40 volumes; ≈ 35-45 s per volume
                                                               # and model on 2 CPU cores
    .venv/bin/python benchmarks/ct3d_merlin.py --device cuda   # on a GPU (minutes)
    .venv/bin/python benchmarks/ct3d_merlin.py --quick         # 14 volumes, the twins only:
                                                               # proves it runs
    .venv/bin/python benchmarks/ct3d_merlin.py --cost 3        # per-volume forward seconds of
                                                               # astra and its twin, interleaved
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

MODELS_3D = ("astra", "astra_random", "merlin", "merlin_random")
SLICE_MODEL = "efficientnet_lite0"
SLICE_WINDOW = "40,400"  # abdominal soft-tissue window for the 2-D encoder's slices


def extract_one(model: str, root: Path, out: Path, device: str, precision: str) -> None:
    """(In a subprocess) extract one 3-D model; print its cost as one JSON line."""
    from vlmprobe.extraction.engine import extract

    t0 = time.perf_counter()
    r = extract(model, "ct3d", root=root, out=out, batch_size=1, num_workers=0, device=device,
                precision=precision, progress=False)
    forward = r.profile["phases_s"]["forward"]
    print(json.dumps({"model": model, "path": str(r.path), "n": r.n_images,
                      "wall_s": time.perf_counter() - t0,
                      "load_s": r.profile["phases_s"]["model load"],
                      "forward_s_per_volume": forward / max(r.n_images, 1),
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      "loadavg": os.getloadavg()[0]}), flush=True)


def time_volumes(n: int, root: Path, device: str) -> None:
    """Seconds per volume of astra and astra_random, forwards interleaved on the same n
    transformed volumes in one process (so both see the same load), fp32 and bf16."""
    import torch

    from vlmprobe.data import load_dataset
    from vlmprobe.encoders import load_encoder
    from vlmprobe.extraction.batches import encode

    encoders = {m: load_encoder(m, device) for m in ("astra", "astra_random")}
    data = load_dataset("ct3d", root)
    volumes = [encoders["astra"].transform_(data.load_image(i))[None] for i in range(n)]
    for precision in ("fp32", "bf16"):
        seconds = {m: [] for m in encoders}
        for x in volumes:
            for m, e in encoders.items():
                t0 = time.perf_counter()
                encode(e, x, precision)
                if device != "cpu":
                    torch.cuda.synchronize()
                seconds[m].append(time.perf_counter() - t0)
        a, r = (float(np.median(seconds[m])) for m in ("astra", "astra_random"))
        print(f"{precision}: astra {a:.1f} s per volume, astra_random {r:.1f} s (median of {n}; "
              f"ratio {a / r:.2f}), load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB", flush=True)


def slice_mean_cache(reference_path: Path, root: Path, out: Path, device: str) -> Path:
    """efficientnet_lite0 on every axial slice (soft-tissue window), averaged per volume into a
    cache beside the 3-D ones: same rows, files and fingerprint as ``reference_path``'s."""
    from vlmprobe.cache import read_cache, write_cache
    from vlmprobe.extraction.engine import extract

    slices = read_cache(extract(SLICE_MODEL, "ct3d", root=root, out=out / "slices",
                                dataset_options={"volume": "slices",
                                                 "dicom_window": SLICE_WINDOW},
                                device=device, progress=False).path)
    ref = read_cache(reference_path)
    volume_of = [r.split("#axial/")[0] + "#volume" for r in slices.relpaths]
    means = np.stack([slices.embeddings[[v == r for v in volume_of]].mean(0)
                      for r in ref.relpaths])
    derived = replace(ref, embeddings=means.astype(np.float32), model=f"{SLICE_MODEL}_slicemean",
                      cache_key=f"{slices.cache_key}+slice-mean", taps={},
                      attrs={**ref.attrs, "encoder": slices.encoder,
                             "baseline": slices.baseline,
                             "derived": f"mean of {SLICE_MODEL}'s axial-slice embeddings per "
                                        f"volume (window {SLICE_WINDOW}), from {slices.path}"})
    return write_cache(Path(reference_path).with_name(f"{SLICE_MODEL}_slicemean.h5"), derived)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="ct3d volumes (half with a lesion)")
    ap.add_argument("--r", type=float, default=0.5, help="site-label correlation of the phantom")
    ap.add_argument("--out", type=Path, default=Path("bench_ct3d"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cost", type=int, default=0, help="only time N volumes per model")
    ap.add_argument("--extract-one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root, out = args.out / "ct3d", args.out / "caches"
    if args.extract_one:
        return extract_one(args.extract_one, root, out, args.device, args.precision)
    if args.cost:
        return time_volumes(args.cost, root, args.device)

    from vlmprobe.data.phantoms import make_phantom
    from vlmprobe.encoders.check import check_entry
    from vlmprobe.probe import run_probe
    from vlmprobe.probe.tables import compare_models
    from vlmprobe.registry import get_model_entry

    n = 14 if args.quick else args.n
    if not root.exists():
        make_phantom("ct3d", root, n=n, seed=0, text_label_correlation=args.r,
                     min_per_class=7, progress=False)
    models = ("astra_random",) if args.quick else MODELS_3D
    costs, paths, skipped = [], [], set()
    for model in models:
        check = check_entry(get_model_entry(model))
        if check.status == "blocked" or model.removesuffix("_random") in skipped:
            # a twin without its model compares nothing (and equals the other twin: same seed)
            why = "; ".join(check.reasons) if check.status == "blocked" else \
                f"{model.removesuffix('_random')} cannot load here"
            print(f"{model}: skipped ({why})", flush=True)
            skipped.add(model)
            continue
        done = subprocess.run([sys.executable, __file__, "--extract-one", model, "--out",
                               str(args.out), "--device", args.device, "--precision",
                               args.precision], capture_output=True, text=True)
        if done.returncode:
            print(f"{model}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        cost = json.loads(done.stdout.strip().splitlines()[-1])
        costs.append(cost)
        paths.append(Path(cost["path"]))
        print(f"{model}: {cost['n']} volumes, load {cost['load_s']:.1f} s, "
              f"{cost['forward_s_per_volume']:.1f} s per volume, peak RSS "
              f"{cost['peak_rss_gb']:.2f} GB (load average {cost['loadavg']:.1f})", flush=True)
    if not paths:
        sys.exit("no 3-D model could run here")
    paths.append(slice_mean_cache(paths[0], root, out, args.device))
    run = run_probe(paths, n_bootstrap=2000 if not args.quick else 200, out=out)
    print("\nmodel                          macro-F1 [95% CI]         balanced acc")
    for r in run.results:
        lo, hi = r.test_ci95["macro_f1"]
        print(f"{r.name:30s} {r.test['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]   "
              f"{r.test.get('balanced_accuracy', float('nan')):.3f}")
    print("\npaired differences (macro-F1, Holm-corrected):")
    for c in compare_models(run.results):
        print(f"  {c['model_a']} - {c['model_b']}: {c['difference']:+.3f} "
              f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}], p_holm {c['p_holm']:.3g}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
