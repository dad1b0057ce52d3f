"""Benchmark (not a test): how close does extraction at default settings come to the fastest
this machine's CPU can be?

On a CPU, decoding and the model share the cores, so no run beats the floor
``N x (forward CPU per image at one thread + decode + transform CPU per image) / cores``: the
forward's CPU taken at one thread, where it is smallest. The benchmark measures both terms and
divides the end-to-end wall time of ``vlmprobe.extraction.extract`` at its defaults by it.

Corpus: ``--n`` (default 2,000) JPEGs of 1024×768 at quality 90, made from the real photographs
bundled with scikit-image (randomly cropped, flipped, colour-jittered, with mild sensor noise;
seeded), in the ``brainmr`` imagefolder layout. On the same images and model it prints:

- decode and transform CPU ms/img (``time.process_time``, median/min/max of repeated passes,
  single process, one thread) for the exact path, ``--fast-decode`` (the official transform with
  its resize by torch's uint8 antialiased kernel) and JPEG DCT draft decoding (not used: shown
  for its fidelity), each with the per-image cosine of its embeddings to the exact path's;
- forward CPU ms/img at one thread (``time.process_time`` over all images, pre-decoded), and the
  floor it gives with each decode path on this machine's cores;
- pure forward: the model alone on the pre-decoded images at ``--threads`` (default: torch's),
  wall, timed before and after the end-to-end runs (the machine's load drifts; the mean
  brackets them) — information, not the reference;
- end-to-end: the whole ``extract`` call at default settings (its worker plan; fingerprint, model
  load, chunk files, cache write included), exact and ``--fast-decode``, each with its profile
  (where the wall time went) and the CPU it used (this process and its workers) against the
  floor's CPU, a figure that other processes' load inflates far less than wall time;
- the per-image cosine between the exact and fast-decode caches.

The last line is ``ratio: <end-to-end exact wall / floor wall>``; the line before it is the same
for ``--fast-decode``. The first lines give the load average and the command to rerun.

    .venv/bin/python benchmarks/extract.py                 # the record (≈ 5 min on 2 quiet cores)
    .venv/bin/python benchmarks/extract.py --n 200         # a first look
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

import vlmprobe

from vlmprobe.cache.tools import compare_caches
from vlmprobe.data import load_dataset, read_image
from vlmprobe.registry import get_dataset_entry
from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.transforms import fast_transform
from vlmprobe.extraction import encode, extract
from vlmprobe.devices import torch_threads
from vlmprobe.extraction.plan import usable_cores
from vlmprobe.extraction.profile import profile_lines

DATASET = "brainmr"  # imagefolder of JPEGs: <root>/<class>/*.jpg
W, H, QUALITY = 1024, 768, 90


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
            data.hubble_deep_field(), data.immunohistochemistry(), data.retina(),
            data.stereo_motorcycle()[0]]


def _corpus_image(photos: list[Image.Image], rng: np.random.Generator) -> Image.Image:
    """One corpus image: a random 4:3 crop covering 50-100 % of the largest 4:3 window of a
    random photograph, to 1024x768, maybe mirrored, colour-jittered, with sensor noise."""
    im = photos[rng.integers(len(photos))]
    cw = min(im.width, im.height * 4 / 3) * rng.uniform(0.5, 1.0)
    ch = cw * 3 / 4
    x0, y0 = rng.uniform(0, im.width - cw), rng.uniform(0, im.height - ch)
    crop = im.resize((W, H), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        crop = enhance(crop).enhance(rng.uniform(0.75, 1.25))
    arr = np.asarray(crop, dtype=np.float32) + rng.normal(0, 3.0, (H, W, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _corpus_path(root: Path, i: int) -> Path:
    classes = get_dataset_entry(DATASET).classes
    return root / classes[i % len(classes)] / f"img_{i:05d}.jpg"


def _write_slice(args: tuple[Path, int, int, int, int]) -> None:
    """Images ``start, start + step, ...`` of a parallel corpus, each from its own seed."""
    root, seed, start, n, step = args
    photos = [Image.fromarray(p).convert("RGB") for p in _photos()]
    for i in range(start, n, step):
        _corpus_image(photos, np.random.default_rng([seed, i])).save(_corpus_path(root, i),
                                                                     quality=QUALITY)


def make_corpus(root: Path, n: int, seed: int = 0, processes: int = 1) -> Path:
    """Seeded 1024×768 q90 JPEGs; reused when ``corpus.json`` says it is the same corpus.
    ``processes`` > 1 draws each image from its own seed (another corpus than the sequential
    one, of the same recipe) so that processes can share the work."""
    spec = {"n": n, "seed": seed, "size": [W, H], "quality": QUALITY, "version": 1}
    if processes > 1:
        spec["per_image_seed"] = True
    marker = root / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    for c in get_dataset_entry(DATASET).classes:
        (root / c).mkdir(parents=True, exist_ok=True)
    if processes > 1:
        from multiprocessing import Pool

        with Pool(processes) as pool:
            pool.map(_write_slice, [(root, seed, k, n, processes) for k in range(processes)])
    else:
        rng = np.random.default_rng(seed)
        photos = [Image.fromarray(p).convert("RGB") for p in _photos()]
        for i in range(n):
            _corpus_image(photos, rng).save(_corpus_path(root, i), quality=QUALITY)
    marker.write_text(json.dumps(spec))
    return root


def decode_ms(paths: list[Path], transform, draft: int | None,
              repeats: int) -> tuple[list[float], list[float], torch.Tensor]:
    """CPU ms/img (``time.process_time``: other processes' load does not count) of decoding and
    of the transform after it, one pass per repeat, as one DataLoader worker does it; and the
    pixels of the last pass."""
    t_dec, t_tf = [], []
    with torch_threads(1):
        for _ in range(repeats):
            dec = tf = 0.0
            pixels = []
            for p in paths:
                t0 = time.process_time()
                im = read_image(p, draft=draft)
                t1 = time.process_time()
                pixels.append(transform(im))
                dec, tf = dec + t1 - t0, tf + time.process_time() - t1
            t_dec.append(1000 * dec / len(paths))
            t_tf.append(1000 * tf / len(paths))
    return t_dec, t_tf, torch.stack(pixels)


def _spread(ms: list[float]) -> str:
    return f"{np.median(ms):.2f} (min {min(ms):.2f}, max {max(ms):.2f})"


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def pure_forward(encoder, pixels: torch.Tensor, batch_size: int, precision: str,
                 clock=time.perf_counter) -> float:
    """Seconds (``clock``: wall, or this process's CPU) for the model alone over all
    pre-decoded images, first (cold) batch included."""
    t0 = clock()
    for s in range(0, len(pixels), batch_size):
        encode(encoder, pixels[s:s + batch_size], precision)
    return clock() - t0


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _rerun() -> str:
    """This command, runnable from anywhere with this checkout's vlmprobe."""
    repo = Path(vlmprobe.__file__).resolve().parents[1]
    return (f"cd {shlex.quote(str(repo))} && PYTHONPATH=. "
            + shlex.join([sys.executable, *sys.argv]))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip() or "?"
    except OSError:
        return "?"


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the DataLoader workers, once joined)."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def timed_extract(args, root: Path, out: Path, **kw):
    """``extract`` into a fresh ``out`` at the benchmark's settings: (wall s, CPU s, result)."""
    shutil.rmtree(out, ignore_errors=True)
    cpu, t0 = _cpu_seconds(), time.perf_counter()
    r = extract(args.model, DATASET, root=root, out=out, batch_size=args.batch_size,
                device="cpu", precision=args.precision, progress=False, **kw)
    return time.perf_counter() - t0, _cpu_seconds() - cpu, r


def ab_compare(args, root: Path, out: Path, n: int, floor_cpu: float) -> None:
    """The default plan against ``--workers`` (the model in this process at ``--threads``),
    exact decoding, alternating so that both see the same drift of a shared machine's load."""
    walls = {"default": [], f"--workers {args.ab_workers}": []}
    for r in range(args.ab_rounds):
        for name, workers in zip(walls, (None, args.ab_workers)):
            load = _loadavg()
            with torch_threads(args.threads):
                wall, cpu, _ = timed_extract(args, root, out / "ab", num_workers=workers)
            walls[name].append(wall)
            print(f"A/B round {r + 1} {name}: {wall:.1f} s ({n / wall:.1f} img/s), CPU "
                  f"{cpu:.1f} s = {cpu / floor_cpu:.2f} x the floor's; load average before {load}")
    (a, wa), (b, wb) = ((k, float(np.median(v))) for k, v in walls.items())
    print(f"A/B median of {args.ab_rounds}: {a} {wa:.1f} s, {b} at {args.threads} thread(s) "
          f"{wb:.1f} s; {b} / {a}: {wb / wa:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads of the pure-forward reference (information only)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--corpus", type=Path,
                    default=Path(tempfile.gettempdir()) / "vlmprobe-bench-extract")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-sample", type=int, default=200,
                    help="images timed for decode ms/img")
    ap.add_argument("--decode-repeats", type=int, default=3,
                    help="timed passes over the decode sample (median, min and max printed)")
    ap.add_argument("--ab-rounds", type=int, default=0,
                    help="after the main runs: this many alternating rounds of the default "
                         "against --workers AB_WORKERS (the model here at --threads), exact")
    ap.add_argument("--ab-workers", type=int, default=1,
                    help="decode workers of the A/B comparison (1: the previous default here)")
    args = ap.parse_args()
    cores = usable_cores()
    print(f"rerun: {_rerun()}  (commit {_commit()})")
    print(f"load average at start: {_loadavg()} (1, 5, 15 min)")

    t0 = time.perf_counter()
    root = make_corpus(args.corpus / f"n{args.n}-s{args.seed}", args.n, args.seed)
    files = sorted(root.rglob("*.jpg"))
    print(f"corpus: {len(files)} JPEGs {W}x{H} q{QUALITY}, mean "
          f"{np.mean([f.stat().st_size for f in files]) / 1024:.0f} KiB, in {root} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"cpu: {os.cpu_count()} logical cores, {cores} usable; torch {torch.__version__}; "
          f"batch {args.batch_size}, {args.precision}, model {args.model}; extract at its "
          "defaults (worker plan chosen)")

    t0 = time.perf_counter()
    encoder = load_encoder(args.model, "cpu")
    print(f"model load: {time.perf_counter() - t0:.1f} s")
    p = encoder.entry.preprocess
    sample = files[:: max(1, len(files) // args.decode_sample)][:args.decode_sample]
    # exact; --fast-decode (one-stage resize by torch's uint8 kernel); and, for the record, the
    # JPEG DCT draft (1/2 scale, sides >= the resize size) that --fast-decode no longer uses
    variants = {"exact": (encoder.transform_, None),
                "fast-decode": (fast_transform(encoder.transform_), None),
                "DCT draft": (encoder.transform_, max(p.image_size, p.resize_size or 0))}
    embs, decode_cpu = {}, {}
    for name, (transform, draft) in variants.items():
        dec, tf, pixels = decode_ms(sample, transform, draft, args.decode_repeats)
        with torch_threads(1):
            embs[name] = np.concatenate([encode(encoder, pixels[s:s + args.batch_size])[encoder.entry.tap]
                                         for s in range(0, len(pixels), args.batch_size)])
        cos = _cosine(embs["exact"], embs[name])
        total = [d + t for d, t in zip(dec, tf)]
        decode_cpu[name] = float(np.median(total))
        print(f"decode+transform CPU ms/img ({name}): {_spread(total)}; decode {_spread(dec)}, "
              f"transform {_spread(tf)} ({len(sample)} images x {args.decode_repeats} passes, "
              f"1 process, 1 thread); cosine to exact min {cos.min():.5f} "
              f"median {np.median(cos):.5f}")

    data = load_dataset(DATASET, root)
    t0 = time.perf_counter()
    with torch_threads(1):
        pixels = torch.stack([encoder.transform_(data.load_image(i)) for i in range(len(data))])
        print(f"pre-decoded {len(pixels)} images into memory in {time.perf_counter() - t0:.1f} s")
        forward_cpu = 1000 * pure_forward(encoder, pixels, args.batch_size, args.precision,
                                          time.process_time) / len(data)
    print(f"forward CPU ms/img at 1 thread: {forward_cpu:.2f} (process_time, all {len(data)} "
          f"images, batch {args.batch_size})")
    floor = {name: len(data) * (forward_cpu + decode_cpu[name]) / 1000 / cores
             for name in ("exact", "fast-decode")}
    for name, wall in floor.items():
        print(f"CPU floor ({name}): {len(data)} x ({forward_cpu:.2f} + {decode_cpu[name]:.2f}) ms "
              f"/ {cores} cores = {wall:.1f} s ({len(data) / wall:.1f} img/s)")
    with torch_threads(args.threads):
        before = pure_forward(encoder, pixels, args.batch_size, args.precision)
    print(f"pure forward at {args.threads} thread(s) (before): {before:.1f} s  "
          f"({1000 * before / len(data):.1f} ms/img, {len(data) / before:.1f} img/s)")

    out = Path(tempfile.mkdtemp(prefix="vlmprobe-bench-out-"))
    walls = {}
    for name, fast in (("exact", False), ("fast-decode", True)):
        load = _loadavg()
        walls[name], cpu, r = timed_extract(args, root, out / name, fast_decode=fast)
        print(f"end-to-end extract ({name}): {walls[name]:.1f} s  "
              f"({len(data) / walls[name]:.1f} img/s, {r.n_images} images; includes "
              f"fingerprint, model load, cache write); CPU used {cpu:.1f} s = "
              f"{cpu / (floor[name] * cores):.2f} x the floor's; load average before {load}, "
              f"after {_loadavg()}")
        for line in profile_lines(r.profile):
            print("  " + line)
    # Timed again after the end-to-end runs: on a shared machine the load drifts, and the mean of
    # the two brackets the end-to-end runs in time.
    with torch_threads(args.threads):
        after = pure_forward(encoder, pixels, args.batch_size, args.precision)
    pure = (before + after) / 2
    print(f"pure forward at {args.threads} thread(s) (after): {after:.1f} s; mean {pure:.1f} s "
          f"({len(data) / pure:.1f} img/s)")
    for name, wall in walls.items():
        print(f"end-to-end / mean pure forward ({name}, information): {wall / pure:.3f}")
    cmp = compare_caches(out / "exact" / DATASET / f"{args.model}.h5",
                         out / "fast-decode" / DATASET / f"{args.model}.h5")
    c = cmp["cosine"]
    print(f"fast-decode vs exact cosine: min {c['min']:.5f}  p1 {c['p01']:.5f}  "
          f"median {c['median']:.5f}; images below 0.999: {cmp['n_below_0.999']}")
    if args.ab_rounds:
        ab_compare(args, root, out, len(data), floor["exact"] * cores)
    print(f"load average at end: {_loadavg()}")
    print(f"ratio (fast-decode): {walls['fast-decode'] / floor['fast-decode']:.3f}")
    print(f"ratio: {walls['exact'] / floor['exact']:.3f}")


if __name__ == "__main__":
    main()
