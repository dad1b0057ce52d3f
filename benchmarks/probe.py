"""Benchmark (not a test): the full probe protocol with both solvers on the same data.

Seeded synthetic embeddings, N=5,000, d=1,024, 9 classes: class means in a 16-dimensional
subspace plus isotropic noise, scaled so test accuracy lies between 0.7 and 0.95 (neither
separable nor trivial). Runs 5 folds × 5 t + refit per solver (fast first, then the sklearn
reference; each fold's timing is printed as it ends), and prints per-t time, convergence,
selected t and agreement; the last line is ``ratio: ...``. Both sides fit one fold at a time
(the per-call timings would overlap otherwise); a last fast run with the folds in parallel
(``n_jobs=0``: one thread per core) is timed whole and compared with the serial fast run.

    .venv/bin/python benchmarks/probe.py            # full run (sklearn side ≈ 12–25 min, 2 cores)
    .venv/bin/python benchmarks/probe.py --quick    # N=600, d=128: proves it runs
    .venv/bin/python benchmarks/probe.py --device cuda   # the fast solver on a GPU (torch)
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from vlmprobe.probe import protocol as probe_mod
from vlmprobe.probe import ProbeConfig, fit_probe
from vlmprobe.data.splits import SplitSpec, make_split


def synthetic(n: int, d: int, k: int, seed: int = 0, rank: int = 16, sep: float = 1.1):
    """Class means in a random rank-`rank` subspace, unit Gaussian noise in all d dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0]
    means = rng.normal(size=(k, rank)) * sep @ basis.T
    X = means[y] + rng.normal(size=(n, d))
    return X.astype(np.float32), y


def timed_fit_svm(times: list, solver: str):
    """Wrap the probe's single dispatch point to time each call (one call = one fold's t path):
    wall time and this process's CPU time (all threads), since the machine may be shared."""
    inner = probe_mod._fit_grid

    def wrapper(X, y, Cs, cfg):
        t0, c0 = time.perf_counter(), time.process_time()
        out = inner(X, y, Cs, cfg)
        times.append((len(Cs), time.perf_counter() - t0, time.process_time() - c0))
        print(f"  [{solver}] call {len(times)}: {len(Cs)} C, {times[-1][1]:.1f} s wall, "
              f"{times[-1][2]:.1f} s CPU (load {os.getloadavg()[0]:.1f})", flush=True)
        return out
    return wrapper


def run(solver: str, X, y, test, fold, names, device: str = "auto"):
    """The protocol with one solver, one fold at a time, each SVM path timed."""
    times: list = []
    original = probe_mod._fit_grid
    probe_mod._fit_grid = timed_fit_svm(times, solver)
    try:
        t0 = time.perf_counter()
        fields, probe = fit_probe(X, y, test, fold, names,
                                  ProbeConfig(solver=solver, device=device, n_bootstrap=200,
                                              n_jobs=1))
        total = time.perf_counter() - t0
    finally:
        probe_mod._fit_grid = original
    n_fits = sum(n for n, _, _ in times)
    svm_time = sum(t for _, t, _ in times)
    cpu_time = sum(c for _, _, c in times)
    conv = "all" if fields["all_converged"] else f"{fields['n_unconverged']} unconverged"
    used = fields["fits"]["settings"].get("device_used")
    label = solver if used is None else f"{solver} on {used}"
    print(f"[{label}] total {total:.1f} s, SVM fits {svm_time:.1f} s wall / {cpu_time:.1f} s CPU "
          f"for {n_fits} fits ({svm_time / n_fits:.2f} s wall per t; load average "
          f"{os.getloadavg()[0]:.1f}); selected t={fields['selected_t']:g}"
          f"{' (saturated)' if fields['saturated'] else ''}; converged: "
          f"{conv}; "
          f"val macro-F1 per t {np.round(fields['val_macro_f1'], 4).tolist()}; "
          f"test accuracy {fields['test']['accuracy']:.3f}, macro-F1 {fields['test']['macro_f1']:.3f}",
          flush=True)
    return fields, probe, svm_time, cpu_time, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N and d, to check that it runs")
    ap.add_argument("--device", default="auto", help="where the fast solver runs: auto (CUDA "
                    "when torch sees a GPU, else numpy) | numpy | cpu (torch) | cuda[:i]")
    args = ap.parse_args()
    n, d, k = (600, 128, 9) if args.quick else (5000, 1024, 9)
    X, y = synthetic(n, d, k)
    ids = [f"{i:05d}" for i in range(n)]
    test, fold = make_split(ids, y, SplitSpec(seed=0)).align(ids, "bench")
    names = [f"c{i}" for i in range(k)]
    print(f"data: N={n}, d={d}, {k} classes; train {int((~test).sum())}, test {int(test.sum())}",
          flush=True)
    # fast first: on a shared machine its numbers exist even if the long reference run is cut.
    fast, fast_probe, t_fast, c_fast, whole_fast = run("fast", X, y, test, fold, names, args.device)
    t0 = time.perf_counter()
    parallel, _ = fit_probe(X, y, test, fold, names, ProbeConfig(device=args.device,
                                                                 n_bootstrap=200, n_jobs=0))
    whole_parallel = time.perf_counter() - t0
    print(f"[fast, folds in parallel on {os.cpu_count()} cores] whole protocol "
          f"{whole_parallel:.1f} s vs {whole_fast:.1f} s one fold at a time "
          f"({whole_fast / whole_parallel:.2f}x; same validation F1: "
          f"{parallel['val_macro_f1'] == fast['val_macro_f1']})", flush=True)
    ref, ref_probe, t_ref, c_ref, _ = run("sklearn", X, y, test, fold, names)
    agree = (ref_probe.predict(X[test]) == fast_probe.predict(X[test])).mean()
    print(f"test accuracy (sklearn refit): {ref['refit_test']['accuracy']:.3f}; "
          f"selected t: sklearn {ref['selected_t']:g}, fast {fast['selected_t']:g}; "
          f"refit test prediction agreement {agree:.4f}; max |Δ val macro-F1| per t "
          f"{np.max(np.abs(np.subtract(ref['val_macro_f1'], fast['val_macro_f1']))):.4f}")
    print(f"CPU-time ratio: {c_ref / c_fast:.2f} (fast solver BLAS threads: 1)")
    print(f"ratio: {t_ref / t_fast:.2f}")


if __name__ == "__main__":
    main()
