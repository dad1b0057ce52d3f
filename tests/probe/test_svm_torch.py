"""FastLinearSVC's torch backend: the same Newton method as the NumPy path, checked
against it and against liblinear run to tol=1e-8, on CPU torch (and CUDA where present)."""
import json

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks
from test_probe_cli import _write
from test_svm import _problem, primal_objective
from typer.testing import CliRunner

from vlmprobe.cli import app
from vlmprobe.probe import ProbeConfig, fit_probe
from vlmprobe.data.splits import SplitSpec, make_split
from vlmprobe.devices import resolve_device
from vlmprobe.probe.svm import FastLinearSVC, fit_path, newton_system
from vlmprobe.validation import VlmprobeError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
PROBLEMS = [
    (200, 20, 2, 2.0, 1.0),      # binary, N > d, overlapping
    (200, 20, 9, 2.0, 10.0),     # 9 classes, N > d, overlapping
    (400, 50, 9, 3.0, 1000.0),   # 9 classes, N > d, large C
    (100, 300, 2, 0.1, 50.0),    # binary, N < d, separable
    (150, 300, 9, 1.0, 100.0),   # 9 classes, N < d, separable
]


def _weights(model):
    return np.hstack([model.coef_, model.intercept_[:, None]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d, k, noise, C", PROBLEMS)
def test_torch_matches_numpy_and_liblinear(n, d, k, noise, C, device):
    X, y = _problem(n, d, k, noise)
    ref = LinearSVC(C=C, tol=1e-8, max_iter=100000).fit(X, y)
    base = FastLinearSVC(C=C).fit(X, y)
    fast = FastLinearSVC(C=C, device=device).fit(X, y)
    assert fast.converged_ and fast.device_.startswith(device) and base.device_ == "numpy"
    f_ref = primal_objective(ref, X, y, C)
    assert abs(primal_objective(fast, X, y, C) - f_ref) <= 1e-4 * f_ref
    assert (fast.predict(X) == ref.predict(X)).mean() >= 0.995
    # Both stop at ||∇f(w)|| ≤ tol·||w|| per class, and f is 1-strongly convex, so each is within
    # tol·||w|| of the optimum: per class ||w_torch - w_numpy|| ≤ tol·(||w_torch|| + ||w_numpy||).
    # (Observed: ≤ 3e-11 relative; the two take the same steps up to rounding.)
    W, W0 = _weights(fast), _weights(base)
    norms = np.linalg.norm(W, axis=1) + np.linalg.norm(W0, axis=1)
    assert np.all(np.linalg.norm(W - W0, axis=1) <= fast.tol * norms)
    assert fast.coef_.dtype == np.float64 and isinstance(fast.coef_, np.ndarray)


def test_batched_gram_matrices_follow_any_active_sets():
    """Each class's Gram matrix, rebuilt from its changed rows, its active rows or XᵀX minus its
    inactive rows (whichever are fewest, per class within one batch), equals X_AᵀX_A."""
    rng = np.random.default_rng(0)
    Xb = torch.as_tensor(rng.normal(size=(60, 8)))
    system = newton_system(Xb, 3)
    act = torch.ones(3, 60, dtype=torch.float64)
    # rows off per class: 3 (changed rows used) / 55 (the 5 active) / 30 (changed, a tie),
    # then 2 and 4 fresh random rows (XᵀX minus the inactive rows, fewer than those that changed)
    steps = [([0, 1, 2], [3, 55, 30]), ([2, 0], [2, 4])]
    for cols, n_off in steps:
        for c, n in zip(cols, n_off):
            act[c] = 1.0
            act[c, rng.choice(60, n, replace=False)] = 0.0
        gram = system._sync(act[cols], torch.tensor(cols))
        exact = torch.stack([Xb[act[c] > 0].T @ Xb[act[c] > 0] for c in cols])
        assert torch.allclose(gram, exact, rtol=1e-12, atol=1e-10)
    assert torch.equal(system.held, act)


def _selected_t(models, X_val, y_val):
    """The protocol's choice: best validation macro-F1, ties to the smallest t."""
    f1 = [f1_score(y_val, m.predict(X_val), average="macro") for m in models]
    return int(np.argmax(f1)), f1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d, k, noise", [
    (300, 20, 2, 2.5),    # binary, N > d, overlapping
    (300, 20, 9, 1.2),    # 9 classes, N > d, overlapping
    (120, 300, 2, 0.3),   # binary, N < d, separable: the grid saturates (validation F1 1.0)
    (150, 300, 9, 4.0),   # 9 classes, N < d: saturates too, at validation F1 0.77
])
def test_torch_path_selects_the_reference_t(n, d, k, noise, device):
    """fit_path over the paper's t grid on 80% of the rows, validation macro-F1 on the rest:
    the torch path picks the NumPy path's t and the reference's t (or, for the reference, one
    whose validation F1 is within 0.005 of its own choice: the issue's criterion)."""
    X, y = _problem(n, d, k, noise)
    cut = int(0.8 * n)
    ts = [1.0, 10.0, 100.0, 1000.0, 10000.0]
    Cs = [t * d / cut for t in ts]
    refs = [LinearSVC(C=C, tol=1e-8, max_iter=100000).fit(X[:cut], y[:cut]) for C in Cs]
    i_ref, f1_ref = _selected_t(refs, X[cut:], y[cut:])
    i_np, f1_np = _selected_t(fit_path(X[:cut], y[:cut], Cs), X[cut:], y[cut:])
    path = fit_path(X[:cut], y[:cut], Cs, device=device)
    i_torch, f1_torch = _selected_t(path, X[cut:], y[cut:])
    assert all(m.converged_ for m in path) and [m.C for m in path] == Cs
    assert i_torch == i_np and f1_torch == pytest.approx(f1_np, abs=1e-12)
    assert i_torch == i_ref or abs(f1_ref[i_torch] - f1_ref[i_ref]) <= 0.005


def test_auto_without_a_gpu_is_the_numpy_path_bit_for_bit():
    X, y = _problem(150, 300, 9, 1.0)
    auto = FastLinearSVC(C=10.0, device="auto").fit(X, y)
    expected = "cuda:0" if torch.cuda.is_available() else "numpy"
    assert auto.device_ == resolve_device("auto", numpy=True) == expected
    if expected == "numpy":
        assert np.array_equal(_weights(auto), _weights(FastLinearSVC(C=10.0).fit(X, y)))


def test_bad_devices_are_refused_clearly():
    X, y = _problem(50, 5, 2, 1.0)
    with pytest.raises(ValueError, match="'device' parameter.*cuda:<index>"):
        FastLinearSVC(device="gpu").fit(X, y)
    with pytest.raises(VlmprobeError, match="Unknown device 'tpu'"):
        resolve_device("tpu", numpy=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU here; use 'auto'"):
            FastLinearSVC(device="cuda:0").fit(X, y)


def test_unconverged_torch_fit_warns_and_says_so():
    X, y = _problem(300, 40, 9, 1.5)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        model = FastLinearSVC(C=100.0, max_iter=2, device="cpu").fit(X, y)
    assert not model.converged_


def test_torch_fit_keeps_the_callers_torch_threads():
    before = torch.get_num_threads()
    X, y = _problem(100, 10, 3, 1.0)
    FastLinearSVC(device="cpu", blas_threads=1).fit(X, y)
    assert torch.get_num_threads() == before


@parametrize_with_checks([FastLinearSVC(device="cpu")])
def test_sklearn_estimator_checks_on_torch(estimator, check):
    check(estimator)


def _split_problem(n=240, d=20, k=3, noise=1.5):
    X, y = _problem(n, d, k, noise)
    ids = [f"{i:04d}" for i in range(n)]
    test, fold = make_split(ids, y, SplitSpec(seed=0)).align(ids, "t")
    return X, y, test, fold, [f"c{i}" for i in range(k)]


def test_probe_records_the_device_each_fit_used():
    X, y, test, fold, names = _split_problem()
    runs = {dev: fit_probe(X, y, test, fold, names, ProbeConfig(device=dev, n_bootstrap=10))[0]
            for dev in ("auto", "numpy", "cpu")}
    for dev, res in runs.items():
        settings = res["fits"]["settings"]
        assert settings["device"] == dev and settings["device_used"] == resolve_device(dev, numpy=True)
    assert runs["cpu"]["selected_t"] == runs["numpy"]["selected_t"]
    assert runs["cpu"]["val_macro_f1"] == pytest.approx(runs["numpy"]["val_macro_f1"], abs=1e-12)
    if not torch.cuda.is_available():  # auto without a GPU: today's NumPy results exactly
        assert runs["auto"]["val_macro_f1"] == runs["numpy"]["val_macro_f1"]
        assert runs["auto"]["test"] == runs["numpy"]["test"]


def test_probe_refuses_a_device_the_solver_cannot_use():
    X, y, test, fold, names = _split_problem(n=100)
    with pytest.raises(VlmprobeError, match="fast SVM solver only"):
        fit_probe(X, y, test, fold, names, ProbeConfig(solver="sklearn", device="cpu"))
    with pytest.raises(VlmprobeError, match="--device: Unknown device 'gpu'"):
        fit_probe(X, y, test, fold, names, ProbeConfig(device="gpu"))


def test_probe_command_passes_the_device_through(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    X = (rng.normal(size=(3, 16))[y] * 2 + rng.normal(size=(120, 16))).astype(np.float32)
    path = _write(tmp_path, "medsiglip", X, y)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["probe", str(path), "--out", str(out), "--device", "cpu",
                                      "--t-grid", "1,10", "--bootstrap", "20"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [res] = json.loads((out / "probe_results.t-grid-1_10.n-bootstrap-20.json").read_text())[
        "results"]  # the device is not in the name: it does not change the numbers
    assert res["fits"]["settings"]["device"] == res["fits"]["settings"]["device_used"] == "cpu"
