import tempfile
from pathlib import Path

import numpy as np
import pytest

from vlmprobe.probe import LinearProbe, ProbeConfig, c_value, fit_probe
from vlmprobe.data.splits import SplitSpec, make_split


def test_c_grid_is_t_times_d_over_n():
    assert c_value(1, 1280, 400) == pytest.approx(3.2)
    assert [c_value(t, 512, 100) for t in (1, 10, 100)] == pytest.approx([5.12, 51.2, 512.0])


def _problem(n=300, d=20, noise=1.5, seed=0, n_classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centers = rng.normal(size=(n_classes, d)) * 1.5
    X = centers[y] + rng.normal(size=(n, d)) * noise
    s = make_split([f"{i:04d}" for i in range(n)], y, SplitSpec(seed=seed))
    test, fold = s.align([f"{i:04d}" for i in range(n)], "t")
    return X, y, test, fold


def test_protocol_on_a_learnable_problem():
    X, y, test, fold = _problem()
    fields, probe = fit_probe(X, y, test, fold, ["a", "b", "c"],
                              ProbeConfig(solver="sklearn", n_bootstrap=200))
    assert fields["n_train"] == (~test).sum() and fields["n_test"] == test.sum()
    assert 0.6 < fields["test"]["macro_f1"] <= 1.0
    assert fields["selected_t"] in ProbeConfig().t_grid
    best = int(np.argmax(fields["val_macro_f1"]))
    assert fields["selected_t"] == ProbeConfig().t_grid[best]
    lo, hi = fields["refit_test_macro_f1_ci95"]
    assert lo <= fields["refit_test"]["macro_f1"] <= hi
    # The saved probe reproduces the refit SVM's predictions (C = t*d/N_train recorded).
    assert probe.info["C"] == pytest.approx(fields["selected_t"] * X.shape[1] / (~test).sum())
    acc = (probe.predict(X[test]) == y[test]).mean()
    assert acc == pytest.approx(fields["refit_test"]["accuracy"])
    svm = probe.info["svm"]  # every setting recorded, with the dual/primal choice actually made
    assert svm["dual"] == "auto" and svm["dual_used"] is False and svm["tol"] == 1e-4


def test_separable_high_dim_data_saturates_the_grid():
    # N << d: every t gives the same hard-margin classifier, and the tool says so.
    X, y, test, fold = _problem(n=60, d=2000, noise=0.05, n_classes=2)
    fields, _ = fit_probe(X, y, test, fold, ["neg", "pos"], ProbeConfig(n_bootstrap=50), "pos")
    assert fields["saturated"]
    assert fields["selected_t"] == 1.0  # ties go to the smallest t
    assert "binary_f1" in fields["test"]


def test_ties_go_to_smallest_t_and_sd_is_ddof0():
    X, y, test, fold = _problem(n=200, d=5, noise=0.01)
    fields, _ = fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(n_bootstrap=50))
    assert fields["selected_t"] == 1.0 and fields["test"]["macro_f1"] == 1.0
    assert fields["test_sd"]["macro_f1"] == 0.0


def test_saved_probe_roundtrip_and_torch_decision(tmp_path):
    import torch

    X, y, test, fold = _problem()
    _, probe = fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(n_bootstrap=20))
    path = probe.save(tmp_path / "p")
    assert path.suffix == ".npz" and (tmp_path / "p.json").is_file()
    back = LinearProbe.load(tmp_path / "p")
    np.testing.assert_allclose(back.decision_function(X), probe.decision_function(X))
    t = back.decision_function(torch.as_tensor(X, dtype=torch.float64))
    np.testing.assert_allclose(t.numpy(), probe.decision_function(X), rtol=1e-6)
    # No pickle anywhere in the saved probe.
    np.load(path, allow_pickle=False)


def test_binary_probe_decision_has_one_column_per_class():
    X, y, test, fold = _problem(n=120, n_classes=2)
    _, probe = fit_probe(X, y, test, fold, ["neg", "pos"], ProbeConfig(n_bootstrap=20))
    d = probe.decision_function(X)
    assert d.shape == (len(X), 2) and np.allclose(d[:, 0], -d[:, 1])


def test_fast_solver_gives_the_reference_protocol_result():
    X, y, test, fold = _problem()
    ref, _ = fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(solver="sklearn", n_bootstrap=20))
    fast, probe = fit_probe(X, y, test, fold, ["a", "b", "c"],
                            ProbeConfig(solver="fast", n_bootstrap=20))
    assert fast["selected_t"] == ref["selected_t"] and fast["all_converged"]
    assert fast["test"]["macro_f1"] == pytest.approx(ref["test"]["macro_f1"], abs=0.01)
    svm = probe.info["svm"]
    assert svm["solver"] == "fast" and svm["converged"] and {"tol", "max_iter", "sklearn_version"} <= set(svm)


def test_folds_in_parallel_give_the_serial_answer_bit_for_bit():
    """n_jobs only changes how many folds are fitted at once (threads, one BLAS thread each)."""
    X, y, test, fold = _problem(n=400, d=30, noise=2.0)
    runs = [fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(n_bootstrap=20, n_jobs=j))
            for j in (1, 3)]
    (serial, p1), (parallel, p3) = runs
    assert serial["val_macro_f1"] == parallel["val_macro_f1"]  # exact, not approx
    assert serial["fits"]["records"] == parallel["fits"]["records"]
    assert np.array_equal(p1.coef, p3.coef)
    from vlmprobe.validation import VlmprobeError
    with pytest.raises(VlmprobeError, match="n_jobs must be >= 0"):
        fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(n_bootstrap=20, n_jobs=-1))


def test_unknown_solver_is_refused():
    from vlmprobe.validation import VlmprobeError

    X, y, test, fold = _problem(n=60)
    with pytest.raises(VlmprobeError, match="fast, sklearn"):
        fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(solver="liblinear"))


@pytest.mark.parametrize("n, d, k, noise", [
    (200, 10, 2, 2.0),    # binary, N > d, overlapping
    (180, 20, 9, 0.6),    # 9 classes, N > d
    pytest.param(240, 30, 9, 1.2, marks=pytest.mark.slow),  # 9 classes, overlapping (~15 s)
    (90, 200, 3, 0.3),    # N < d, separable: saturates
])
def test_fast_protocol_selects_the_reference_t(n, d, k, noise):
    """The issue's criterion: same t, or both saturated, or the reference's validation F1 at the
    two t within 0.005; refit test predictions agree >= 99.5%. Reference: LinearSVC at tol=1e-8."""
    X, y, test, fold = _problem(n=n, d=d, noise=noise, n_classes=k)
    names = [f"c{i}" for i in range(k)]
    ref, ref_probe = fit_probe(X, y, test, fold, names,
                               ProbeConfig(solver="sklearn", tol=1e-8, max_iter=100000,
                                           n_bootstrap=10))
    fast, fast_probe = fit_probe(X, y, test, fold, names, ProbeConfig(solver="fast", n_bootstrap=10))
    assert fast["all_converged"]
    assert fast["saturated"] == ref["saturated"]
    if fast["selected_t"] != ref["selected_t"]:
        i, j = (ref["t_grid"].index(t) for t in (ref["selected_t"], fast["selected_t"]))
        assert abs(ref["val_macro_f1"][i] - ref["val_macro_f1"][j]) <= 0.005
    agree = (ref_probe.predict(X[test]) == fast_probe.predict(X[test])).mean()
    assert agree >= 0.995


def test_t_chosen_per_fold_is_recorded():
    X, y, test, fold = _problem(n=200, d=40, noise=2.5)
    fields, _ = fit_probe(X, y, test, fold, ["a", "b", "c"],
                          ProbeConfig(select="per_fold", solver="fast", n_bootstrap=10))
    assert len(fields["selected_per_fold"]) == 5
    assert set(fields["selected_per_fold"]) <= set(ProbeConfig().t_grid)
    mean, _ = fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(solver="fast", n_bootstrap=10))
    assert mean["selected_per_fold"] == [mean["selected_t"]] * 5


@pytest.mark.parametrize("solver", ["sklearn", "fast"])
def test_every_fit_records_its_settings(solver):
    X, y, test, fold = _problem()
    res, _ = fit_probe(X, y, test, fold, ["a", "b", "c"],
                       ProbeConfig(solver=solver, n_bootstrap=20, t_grid=(1, 10)))
    fits = res["fits"]
    assert {"sklearn_version", "tol", "max_iter", "class"} <= set(fits["settings"])
    if solver == "sklearn":
        assert fits["settings"]["dual"] == "auto" and all("dual_used" in r for r in fits["records"])
    n_folds = len(set(fold[~test].tolist()))
    records = fits["records"]
    assert [(r["fold"], r["t"]) for r in records] == (
        [(j, t) for j in range(n_folds) for t in (1, 10)] + [("refit", res["selected_t"])])
    assert sum(not r["converged"] for r in records) == res["n_unconverged"]
    assert all(r["n_iter"] >= 1 and r["C"] == pytest.approx(r["t"] * 20 / r["n_fit"])
               for r in records)


def test_pca_is_fitted_inside_each_fold_and_never_sees_the_test_rows():
    X, y, test, fold = _problem(d=40)
    cfg = ProbeConfig(pca_dim=8, n_bootstrap=20, t_grid=(1, 10))
    res, probe = fit_probe(X, y, test, fold, ["a", "b", "c"], cfg)
    assert res["embed_dim"] == 8
    recs = [r for r in res["fits"]["records"] if r["t"] == 1 and r["fold"] != "refit"]
    kept = [r["pca_variance_kept"] for r in recs]
    assert all(r["pca_components"] == 8 for r in recs) and len(set(kept)) == len(kept)
    # test rows replaced: no fold fit changes (they never enter scaler, PCA or SVM)
    X2 = X.copy()
    X2[test] = np.random.default_rng(1).normal(size=X2[test].shape) * 50
    res2, _ = fit_probe(X2, y, test, fold, ["a", "b", "c"], cfg)
    assert res2["fits"] == res["fits"] and res2["val_macro_f1"] == res["val_macro_f1"]
    # fold 0's rows replaced: fold 0's model (fitted on the others) keeps its PCA, the rest not
    X3 = X.copy()
    X3[(fold == 0) & ~test] *= 3
    recs3 = [r for r in fit_probe(X3, y, test, fold, ["a", "b", "c"], cfg)[0]["fits"]["records"]
             if r["t"] == 1 and r["fold"] != "refit"]
    assert recs3[0]["pca_variance_kept"] == kept[0]
    assert all(a["pca_variance_kept"] != b for a, b in zip(recs3[1:], kept[1:]))
    # the saved probe folds the PCA into its weights: raw embeddings in, same scores out
    lo = LinearProbe.load(probe.save(Path(tempfile.mkdtemp()) / "p").with_suffix(""))
    np.testing.assert_allclose(lo.decision_function(X[test]), probe.decision_function(X[test]))
    assert np.mean(probe.predict(X[test]) == res["test_samples"]["refit_pred"]) == 1.0


@pytest.mark.parametrize("n, d, pca_dim", [(120, 40, 8), (30, 60, 64)])
def test_pixels_baseline_components_have_unit_variance_as_z_scored_features_do(n, d, pca_dim):
    """C = t·d/N assumes unit-variance features: after PCA every component is z-scored on the
    rows it was fitted on (as a model's features are), at most rank-many components kept."""
    from vlmprobe.probe.protocol import _standardizer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 40
    Z = _standardizer(ProbeConfig(pca_dim=pca_dim), X).transform(X)
    assert Z.shape == (n, min(pca_dim, n - 1, d))
    np.testing.assert_allclose(Z.var(0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-9)
