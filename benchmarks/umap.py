"""Benchmark (not a test): the 3x3 UMAP grid as one `vlmprobe umap` process vs a user's loop.

The loop is what a user writes today: one fresh Python process calling 9 seeded
``umap.UMAP(...).fit_transform``. Both sides start with an empty private NUMBA_CACHE_DIR (cold),
then run again with it filled (warm). Prints each configuration's trustworthiness on both sides
(they should agree within 0.01) and ends with ``ratio: <grid time / loop time>`` (cold).

    .venv/bin/python benchmarks/umap.py [--n 10000] [--d 768]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vlmprobe.cache import Cache, write_cache
from vlmprobe.maps import UmapGrid, neighbourhood_scores

LOOP = """
import sys, numpy as np, umap
X = np.load(sys.argv[1])
for nn in (5, 15, 50):
    for md in (0.0, 0.1, 0.5):
        Y = umap.UMAP(n_neighbors=nn, min_dist=md, metric="cosine", random_state=0).fit_transform(X)
        np.save(f"{sys.argv[2]}/nn{nn}-md{md:g}.npy", Y)
"""


def clustered(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    centres = rng.normal(size=(10, d))
    return (centres[labels] * 2 + rng.normal(size=(n, d))).astype(np.float32), labels


def timed(cmd: list[str], numba_cache: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=768)
    args = ap.parse_args()
    X, y = clustered(args.n, args.d)
    work = Path(tempfile.mkdtemp(prefix="umap-bench-"))
    cache = Cache(embeddings=X, labels=y, relpaths=[f"{i}.png" for i in range(len(X))],
                  class_names=[str(i) for i in range(10)], model="synthetic", dataset="bench",
                  dataset_fingerprint="bench", cache_key="bench")
    h5 = write_cache(work / "bench" / "synthetic.h5", cache)
    np.save(work / "X.npy", X)
    (work / "loop").mkdir()
    grid_cmd = [str(Path(sys.executable).with_name("vlmprobe")), "umap", str(h5), "--metric",
                "cosine", "--seed", "0"]
    loop_cmd = [sys.executable, "-c", LOOP, str(work / "X.npy"), str(work / "loop")]
    times = {}
    for run in ("cold", "warm"):
        shutil.rmtree(work / "bench" / "umap", ignore_errors=True)  # else coordinates are reused
        times[run] = (timed(grid_cmd, work / "numba-grid"), timed(loop_cmd, work / "numba-loop"))
        print(f"{run}: grid {times[run][0]:.1f} s, loop {times[run][1]:.1f} s, "
              f"ratio {times[run][0] / times[run][1]:.2f}")
    grid = UmapGrid()
    rows = json.loads((work / "bench" / "umap" / f"synthetic.{grid.tag()}.metrics.json")
                      .read_text())["rows"]
    loop_maps = [np.load(work / "loop" / f"nn{c.n_neighbors}-md{c.min_dist:g}.npy")
                 for c in grid.configs()]
    for row, scores in zip(rows, neighbourhood_scores(X, loop_maps, 10, "cosine")):
        diff = row["trustworthiness"] - scores["trustworthiness"]
        print(f"nn={row['n_neighbors']} md={row['min_dist']:g}: trustworthiness grid "
              f"{row['trustworthiness']:.4f}, loop {scores['trustworthiness']:.4f} "
              f"(diff {diff:+.4f})")
    shutil.rmtree(work)
    print(f"N={args.n}, d={args.d}, {os.cpu_count()} CPU cores")
    print(f"ratio: {times['cold'][0] / times['cold'][1]:.2f}")


if __name__ == "__main__":
    main()
