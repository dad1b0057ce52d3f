"""Benchmark (not a test): what the paper's classifier changes. The full probe protocol with the
exact solver (``--solver fast``) and with scikit-learn's LinearSVC at the paper's defaults
(``--solver sklearn``: tol 1e-4, max_iter 1000), on the same features and split, per dataset:
the selected t, the test macro-F1 (mean of the 5 fold-models), the fits LinearSVC left
unconverged, the time of each, and how far above the exact optimum LinearSVC's objective ends
at each t (fold 0's fitting rows).

Features: efficientnet_lite0 (ImageNet weights, 224 px, CPU) on every phantom (the eight study
datasets and the CT DICOM one), and two real-image stand-ins that ship offline: scikit-learn's
digits (8×8 pixels, 10 classes) and scikit-image's lfw_subset (25×25 faces vs non-faces), each
as raw pixels and as lite0 features of the upscaled image. Load averages are printed at each
dataset's start (the machine may be shared). A seeded low-rank synthetic set (benchmarks/probe.py's
generator, N=2,000, d=256, 9 classes) shows the regime where LinearSVC stops early.

    PYTHONPATH=. .venv/bin/python benchmarks/solvers.py --work /tmp/solvers   # ≈ 30-60 min
    PYTHONPATH=. .venv/bin/python benchmarks/solvers.py --quick               # 3 sets, small n
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from vlmprobe.data.splits import SplitSpec, make_split
from vlmprobe.probe import ProbeConfig, fit_probe

#: phantom -> images (every class at least 7, as a 20% test split plus 5 folds needs)
PHANTOMS = {"breastus": 600, "brainmr": 300, "sarscov2ct": 300, "pneumoniamnist": 300,
            "breakhis": 300, "hicervix": 300, "deepdrid": 300, "isic2019": 742, "ctdicom": 200}
DATASET_KEY = {"breastus": "breastus_phantom"}  # the other phantoms load as their real dataset


def phantom_features(name: str, n: int, work: Path):
    """(lite0 embeddings, labels, class names, relpaths) of the seeded phantom."""
    from vlmprobe.cache import read_cache
    from vlmprobe.data.phantoms import make_phantom
    from vlmprobe.extraction import extract

    root = work / "phantoms" / name
    if not root.exists():
        make_phantom(name, root, n=n, seed=0, progress=False)
    path = extract("efficientnet_lite0", DATASET_KEY.get(name, name), root=root,
                   out=work / "caches", device="cpu", progress=False).path
    cache = read_cache(path)
    y, names, _ = cache.label_view(None)
    return cache.embeddings, y, names, cache.relpaths


def lite0_of(images: np.ndarray) -> np.ndarray:
    """lite0 embeddings of grey images [n, h, w] in [0, 1], through the model's own transform."""
    import torch
    from PIL import Image

    from vlmprobe.encoders import load_encoder

    enc = load_encoder("efficientnet_lite0", "cpu")
    out = []
    for start in range(0, len(images), 32):
        batch = [enc.transform_(Image.fromarray(np.uint8(255 * a)).convert("RGB"))
                 for a in images[start:start + 32]]
        out.append(enc.encode_images(torch.stack(batch)).numpy())
    return np.concatenate(out)


def stand_ins(lite0: bool):
    """(name, X, y, class names) of the real-image stand-ins."""
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    digits = load_digits()
    faces = lfw_subset()  # the first 100 are faces, the rest not
    face_y = np.r_[np.ones(100, int), np.zeros(100, int)]
    from probe import synthetic  # benchmarks/probe.py's low-rank data (class means in 16 dims)

    X, y = synthetic(2000, 256, 9)
    sets = [("synthetic low-rank (N=2000, d=256)", X, y, [str(k) for k in range(9)]),
            ("digits (pixels)", digits.data, digits.target, [str(k) for k in range(10)]),
            ("lfw_subset (pixels)", faces.reshape(200, -1), face_y, ["non-face", "face"])]
    if lite0:
        sets += [("digits (lite0)", lite0_of(digits.images / 16.0), digits.target,
                  [str(k) for k in range(10)]),
                 ("lfw_subset (lite0)", lite0_of(faces), face_y, ["non-face", "face"])]
    return sets


def objective_gaps(X, y, fit: np.ndarray) -> list[float]:
    """Per t: LinearSVC's (paper defaults) objective over the exact optimum's, minus 1, on one
    fold's fitting rows (z-scored as the probe does): how far liblinear stopped from the optimum."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from vlmprobe.probe import T_GRID, c_value
    from vlmprobe.probe.svm import fit_path

    Z, yf = StandardScaler().fit_transform(X[fit]), y[fit]
    Cs = [c_value(t, X.shape[1], len(yf)) for t in T_GRID]
    exact = fit_path(Z, yf, Cs)
    gaps = []
    for C, best in zip(Cs, exact):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            paper = LinearSVC(C=C, random_state=0).fit(Z, yf)
        gaps.append(_objective(paper, Z, yf, C) / _objective(best, Z, yf, C) - 1)
    return gaps


def _objective(model, X, y, C) -> float:
    """LinearSVC's objective summed over the one-vs-rest problems (penalised intercept)."""
    W = np.hstack([model.coef_, model.intercept_[:, None]])
    classes = model.classes_
    Y = (np.where(y == classes[1], 1.0, -1.0)[:, None] if len(classes) == 2
         else np.where(y[:, None] == classes, 1.0, -1.0))
    slack = np.maximum(0.0, 1.0 - Y * (np.hstack([X, np.ones((len(X), 1))]) @ W.T))
    return float(0.5 * (W * W).sum() + C * (slack * slack).sum())


def compare(name: str, X, y, names, relpaths=None) -> dict:
    """Both solvers on one dataset's split (seed 0); prints and returns the comparison row."""
    relpaths = relpaths or [f"{i:06d}" for i in range(len(y))]
    split = make_split(relpaths, y, SplitSpec(), name)
    order = {r: i for i, r in enumerate(split.relpaths)}
    idx = [order[r] for r in relpaths]
    test, fold = split.test[idx], split.fold[idx]
    row = {"dataset": name, "N": len(y), "d": X.shape[1], "classes": len(names),
           "load": os.getloadavg()[0]}
    for solver in ("fast", "sklearn"):
        t0 = time.perf_counter()
        fields, _ = fit_probe(X, y, test, fold, names, ProbeConfig(solver=solver, n_bootstrap=200,
                                                                   n_jobs=1))
        row[solver] = {"t": fields["selected_t"], "saturated": fields["saturated"],
                       "f1": fields["test"]["macro_f1"], "acc": fields["test"]["accuracy"],
                       "unconverged": fields["n_unconverged"], "at_floor": fields["n_at_floor"],
                       "val": fields["val_macro_f1"], "seconds": time.perf_counter() - t0}
    row["gaps"] = objective_gaps(X, y, (~test) & (fold != 0))
    f, s = row["fast"], row["sklearn"]
    print(f"{name}: N={row['N']} d={row['d']} k={row['classes']} load {row['load']:.1f} | fast "
          f"t={f['t']:g} F1 {f['f1']:.4f} ({f['seconds']:.1f} s, {f['at_floor']} at floor) | "
          f"sklearn t={s['t']:g} F1 {s['f1']:.4f} ({s['seconds']:.1f} s, {s['unconverged']} of "
          f"26 fits unconverged) | ΔF1 (sklearn - fast) {s['f1'] - f['f1']:+.4f}; val F1 per t "
          f"fast {np.round(f['val'], 4).tolist()} sklearn {np.round(s['val'], 4).tolist()}; "
          f"LinearSVC objective above the optimum per t (fold 0): "
          f"{[f'{100 * g:.2g}%' for g in row['gaps']]}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/vlmprobe-solvers"))
    ap.add_argument("--quick", action="store_true", help="digits and lfw pixels, one phantom")
    args = ap.parse_args()
    print(f"start {time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()}", flush=True)
    rows = [compare(name, X, y, names) for name, X, y, names in stand_ins(not args.quick)]
    phantoms = {"breastus": 120} if args.quick else PHANTOMS
    for name, n in phantoms.items():
        X, y, names, rel = phantom_features(name, n, args.work)
        rows.append(compare(f"{name} phantom (lite0)", X, y, names, rel))
    same_t = sum(r["fast"]["t"] == r["sklearn"]["t"] for r in rows)
    diffs = np.array([r["sklearn"]["f1"] - r["fast"]["f1"] for r in rows])
    print(f"end {time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()}")
    print(f"same selected t on {same_t} of {len(rows)} datasets; test macro-F1 sklearn - fast: "
          f"mean {diffs.mean():+.4f}, max |.| {np.abs(diffs).max():.4f}")


if __name__ == "__main__":
    main()
