"""Benchmark (not a test): is extraction as fast as the model, or does decoding hold it back?

Corpus: ``--n`` (default 2,000) JPEGs of 1024×768 at quality 90, made from the real photographs
bundled with scikit-image (randomly cropped, flipped, colour-jittered, with mild sensor noise;
seeded), in the ``brainmr`` imagefolder layout. On the same images and model it prints:

- decode and transform CPU ms/img (``time.process_time``, median/min/max of repeated passes,
  single process, one thread) for the exact path, ``--fast-decode`` (the official transform with
  its resize by torch's uint8 antialiased kernel) and JPEG DCT draft decoding (not used: shown
  for its fidelity), each with the per-image cosine of its embeddings to the exact path's;
- pure forward: all images decoded and transformed into memory first, then the model alone at the
  same batch size, thread count and precision, timed before and after the end-to-end runs (the
  machine's load drifts; the mean brackets them);
- end-to-end: the whole ``vlmprobe.extraction.extract`` call (fingerprint, model load, DataLoader
  workers, chunk files, cache write), exact and ``--fast-decode``;
- the per-image cosine between the exact and fast-decode caches.

The last line is ``ratio: <end-to-end exact / mean pure forward>``.

    .venv/bin/python benchmarks/extract.py                 # full run (≈ 10–20 min on 2 cores)
    .venv/bin/python benchmarks/extract.py --n 200         # a first look
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from vlmprobe.cache.tools import compare_caches
from vlmprobe.data import load_dataset, read_image
from vlmprobe.registry import get_dataset_entry
from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.transforms import fast_transform
from vlmprobe.extraction import encode, extract
from vlmprobe.extraction.batches import default_workers

DATASET = "brainmr"  # imagefolder of JPEGs: <root>/<class>/*.jpg
W, H, QUALITY = 1024, 768, 90


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
            data.hubble_deep_field(), data.immunohistochemistry(), data.retina(),
            data.stereo_motorcycle()[0]]


def make_corpus(root: Path, n: int, seed: int = 0) -> Path:
    """Seeded 1024×768 q90 JPEGs; reused when ``corpus.json`` says it is the same corpus."""
    spec = {"n": n, "seed": seed, "size": [W, H], "quality": QUALITY, "version": 1}
    marker = root / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    classes = get_dataset_entry(DATASET).classes
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p).convert("RGB") for p in _photos()]
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = photos[rng.integers(len(photos))]
        # random 4:3 crop covering 50-100 % of the largest 4:3 window, then to 1024x768
        cw = min(im.width, im.height * 4 / 3) * rng.uniform(0.5, 1.0)
        ch = cw * 3 / 4
        x0, y0 = rng.uniform(0, im.width - cw), rng.uniform(0, im.height - ch)
        crop = im.resize((W, H), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            crop = enhance(crop).enhance(rng.uniform(0.75, 1.25))
        arr = np.asarray(crop, dtype=np.float32) + rng.normal(0, 3.0, (H, W, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            root / classes[i % len(classes)] / f"img_{i:05d}.jpg", quality=QUALITY)
    marker.write_text(json.dumps(spec))
    return root


class one_thread:
    """Torch at one intra-op thread, as in a DataLoader worker (several threads spinning on a
    busy 2-core machine make the transform's small tensor ops many times slower)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def decode_ms(paths: list[Path], transform, draft: int | None,
              repeats: int) -> tuple[list[float], list[float], torch.Tensor]:
    """CPU ms/img (``time.process_time``: other processes' load does not count) of decoding and
    of the transform after it, one pass per repeat, as one DataLoader worker does it; and the
    pixels of the last pass."""
    t_dec, t_tf = [], []
    with one_thread():
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


def pure_forward(encoder, pixels: torch.Tensor, batch_size: int, precision: str) -> float:
    """Seconds for the model alone over all pre-decoded images, first (cold) batch included."""
    t0 = time.perf_counter()
    for s in range(0, len(pixels), batch_size):
        encode(encoder, pixels[s:s + batch_size], precision)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--corpus", type=Path,
                    default=Path(tempfile.gettempdir()) / "vlmprobe-bench-extract")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-sample", type=int, default=200,
                    help="images timed for decode ms/img")
    ap.add_argument("--decode-repeats", type=int, default=3,
                    help="timed passes over the decode sample (median, min and max printed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # DataLoader workers inherit it

    t0 = time.perf_counter()
    root = make_corpus(args.corpus / f"n{args.n}-s{args.seed}", args.n, args.seed)
    files = sorted(root.rglob("*.jpg"))
    print(f"corpus: {len(files)} JPEGs {W}x{H} q{QUALITY}, mean "
          f"{np.mean([f.stat().st_size for f in files]) / 1024:.0f} KiB, in {root} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"cpu: {os.cpu_count()} logical cores, load average {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}, {args.threads} threads, {args.workers} decode workers, "
          f"batch {args.batch_size}, {args.precision}, model {args.model}")

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
    embs = {}
    for name, (transform, draft) in variants.items():
        dec, tf, pixels = decode_ms(sample, transform, draft, args.decode_repeats)
        with one_thread():
            embs[name] = np.concatenate([encode(encoder, pixels[s:s + args.batch_size])[encoder.entry.tap]
                                         for s in range(0, len(pixels), args.batch_size)])
        cos = _cosine(embs["exact"], embs[name])
        total = [d + t for d, t in zip(dec, tf)]
        print(f"decode+transform CPU ms/img ({name}): {_spread(total)}; decode {_spread(dec)}, "
              f"transform {_spread(tf)} ({len(sample)} images x {args.decode_repeats} passes, "
              f"1 process, 1 thread); cosine to exact min {cos.min():.5f} "
              f"median {np.median(cos):.5f}")

    data = load_dataset(DATASET, root)
    t0 = time.perf_counter()
    with one_thread():
        pixels = torch.stack([encoder.transform_(data.load_image(i)) for i in range(len(data))])
    print(f"pre-decoded {len(pixels)} images into memory in {time.perf_counter() - t0:.1f} s")
    before = pure_forward(encoder, pixels, args.batch_size, args.precision)
    print(f"pure forward (before): {before:.1f} s  ({1000 * before / len(data):.1f} ms/img, "
          f"{len(data) / before:.1f} img/s)")

    out = Path(tempfile.mkdtemp(prefix="vlmprobe-bench-out-"))
    walls = {}
    for name, fast in (("exact", False), ("fast-decode", True)):
        t0 = time.perf_counter()
        r = extract(args.model, DATASET, root=root, out=out / name, batch_size=args.batch_size,
                    device="cpu", num_workers=args.workers, precision=args.precision,
                    fast_decode=fast, progress=False, force=True)
        walls[name] = time.perf_counter() - t0
        print(f"end-to-end extract ({name}): {walls[name]:.1f} s  "
              f"({len(data) / walls[name]:.1f} img/s, {r.n_images} images; includes "
              f"fingerprint, model load, cache write)")
    # Timed again after the end-to-end runs: on a shared machine the load drifts, and the mean of
    # the two brackets the end-to-end runs in time.
    after = pure_forward(encoder, pixels, args.batch_size, args.precision)
    pure = (before + after) / 2
    print(f"pure forward (after): {after:.1f} s; mean {pure:.1f} s ({len(data) / pure:.1f} img/s)")
    for name, wall in walls.items():
        print(f"end-to-end / mean pure forward ({name}): {wall / pure:.3f}")
    cmp = compare_caches(out / "exact" / DATASET / f"{args.model}.h5",
                         out / "fast-decode" / DATASET / f"{args.model}.h5")
    c = cmp["cosine"]
    print(f"fast-decode vs exact cosine: min {c['min']:.5f}  p1 {c['p01']:.5f}  "
          f"median {c['median']:.5f}; images below 0.999: {cmp['n_below_0.999']}")
    print(f"ratio (fast-decode): {walls['fast-decode'] / pure:.3f}")
    print(f"ratio: {walls['exact'] / pure:.3f}")


if __name__ == "__main__":
    main()
