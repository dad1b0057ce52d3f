"""Probe outputs a reviewer needs: tables across caches with CIs, paired comparisons,
outer-split repeats, per-image predictions, the shuffled-label null control, bad input."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vlmprobe.cache import Cache
from vlmprobe.probe import ProbeConfig, fit_probe, run_probe, write_table
from vlmprobe.data.splits import SplitSpec, make_split
from vlmprobe.validation import VlmprobeError

FAST = dict(solver="fast", n_bootstrap=200)


def _data(n=240, d=12, signal=2.0, seed=0, k=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(k, d))[y] * signal + rng.normal(size=(n, d))
    return X.astype(np.float32), y


def _cache(tmp_path, X, y, model):
    return Cache(embeddings=X, labels=y, relpaths=[f"img{i:04d}.png" for i in range(len(X))],
                 class_names=["a", "b", "c"], model=model, dataset="toyset",
                 dataset_fingerprint="f", cache_key=model, path=tmp_path / f"{model}.h5")


def _split(y, seed=0):
    ids = [f"img{i:04d}.png" for i in range(len(y))]
    return make_split(ids, y, SplitSpec(seed=seed)).align(ids, "t")


def test_shuffled_labels_land_at_chance():
    X, y = _data(n=600, signal=3.0)
    test, fold = _split(y)
    real, _ = fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(**FAST))
    null, probe = fit_probe(X, y, test, fold, ["a", "b", "c"],
                            ProbeConfig(shuffle_labels=True, **FAST))
    assert real["test"]["accuracy"] > 0.9
    # Chance for predictions independent of the truth: sum_k P(true k) P(predicted k).
    s = null["test_samples"]
    p_true = np.bincount(s["y"], minlength=3) / len(s["y"])
    p_pred = np.bincount(s["fold_pred"].ravel(), minlength=3) / s["fold_pred"].size
    chance = float(p_true @ p_pred)
    se = np.sqrt(chance * (1 - chance) / len(s["y"]))
    assert abs(null["test"]["accuracy"] - chance) <= 2 * se
    assert null["shuffled_labels"] and probe.info["shuffled_labels"]
    assert null["test"]["macro_auroc"] < 0.62 < real["test"]["macro_auroc"]


def test_every_metric_has_a_ci_and_per_class_values():
    X, y = _data()
    test, fold = _split(y)
    f, _ = fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(**FAST))
    assert set(f["test"]) == {"accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                              "macro_auroc"}
    for m, (lo, hi) in f["test_ci95"].items():
        assert lo <= f["test"][m] <= hi, m
    assert all(len(v) == 3 for v in f["per_class"].values())
    assert set(f["per_class"]) == {"f1", "sensitivity", "specificity", "auroc"}


def test_caches_table_comparisons_repeats_and_predictions(tmp_path):
    X, y = _data(n=300)
    noise = np.random.default_rng(5).normal(size=X.shape).astype(np.float32)
    caches = [_cache(tmp_path, X, y, "good"), _cache(tmp_path, noise, y, "noise")]
    results = run_probe(caches, out=tmp_path / "out", config=ProbeConfig(repeats=2, **FAST))
    good, bad = results
    assert len(good.repeats) == 2
    assert good.repeats[0]["split_file"] != good.repeats[1]["split_file"]
    assert "(2 splits)" in good.cell("macro_f1")
    with open(good.predictions_file) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == good.n_test and {"relpath", "true", "refit_pred", "fold4_pred"} <= set(rows[0])
    write_table(results, tmp_path / "tables")
    table = (tmp_path / "tables" / "probe_results.table.md").read_text()
    assert "toyset accuracy %" in table and "toyset macro-F1 %" in table
    noise_row = next(line for line in table.splitlines() if line.startswith("| noise"))
    assert "†" in noise_row
    tex = (tmp_path / "tables" / "probe_results.table.tex").read_text()
    assert "\\toprule" in tex and "$\\pm$" in tex and "macro-F1 \\%" in tex
    with open(tmp_path / "tables" / "probe_results.comparisons.csv") as f:
        [cmp] = list(csv.DictReader(f))
    assert (cmp["model A"], cmp["model B"]) == ("good", "noise") and float(cmp["p (Holm)"]) < 0.05


def test_shuffled_probe_does_not_overwrite_the_real_one(tmp_path):
    X, y = _data(n=150)
    cache = _cache(tmp_path, X, y, "m")
    [real] = run_probe([cache], out=tmp_path, config=ProbeConfig(**FAST))
    [null] = run_probe([cache], out=tmp_path, config=ProbeConfig(shuffle_labels=True, **FAST))
    assert real.probe_file != null.probe_file and "shuffled" in null.probe_file
    assert null.name == "m (shuffled labels)"


def test_bad_input_is_refused_by_name():
    X, y = _data(n=90)
    test, fold = _split(y)
    X[7, 3] = np.nan
    with pytest.raises(VlmprobeError, match="NaN or inf.*first rows \\[7\\]"):
        fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(**FAST))
    X[7, 3] = 0
    y2 = y.copy()
    y2[(~test) & (fold != 0) & (y == 2)] = 0  # class c only in fold 0 of the training part
    with pytest.raises(VlmprobeError, match="no training sample outside fold 0"):
        fit_probe(X, y2, test, fold, ["a", "b", "c"], ProbeConfig(**FAST))


def test_metrics_per_subgroup_and_confusion_figure(tmp_path):
    X, y = _data(n=240)
    cache = _cache(tmp_path, X, y, "m")
    cache.metadata = {"sex": ["F" if (i // 3) % 3 else "M" for i in range(len(X))]}
    [r] = run_probe([cache], out=tmp_path, config=ProbeConfig(subgroups=("sex",), **FAST))
    groups = r.subgroups["sex"]
    assert set(groups) == {"F", "M"} and groups["F"]["n"] + groups["M"]["n"] == r.n_test
    for g in groups.values():
        lo, hi = g["test_ci95"]["macro_f1"]
        assert lo <= g["test"]["macro_f1"] <= hi
    write_table([r], tmp_path / "t")
    assert "sex" in (tmp_path / "t" / "probe_results.subgroups.csv").read_text()
    assert (tmp_path / "toyset" / "probe" / "m.confusion.png").is_file()
    with pytest.raises(VlmprobeError, match="no metadata column.*'site'"):
        run_probe([cache], out=tmp_path, config=ProbeConfig(subgroups=("site",), **FAST))


def test_compare_paper_sets_our_cells_against_the_shipped_tables(tmp_path):
    X, y = _data(n=150)
    cache = _cache(tmp_path, X, y, "medsiglip")
    cache.dataset = "breastus"  # a cell of the paper's Table 3: accuracy 82, F1 79
    [r] = run_probe([cache], out=tmp_path, config=ProbeConfig(**FAST))
    write_table([r], tmp_path / "t", paper=True)
    with open(tmp_path / "t" / "probe_results.paper.csv") as f:
        rows = {(row["paper metric"], row["our metric"]): row for row in csv.DictReader(f)}
    assert set(rows) == {("accuracy", "accuracy"), ("f1", "macro_f1")}  # 3 classes: no binary F1
    acc = rows[("accuracy", "accuracy")]
    assert acc["paper % (mean ± sd)"] == "82 ± 2.3" and acc["paper table"] == "Table 3"
    assert float(acc["ours - paper [CI]"].split()[0]) == pytest.approx(100 * r.test["accuracy"] - 82,
                                                                      abs=0.06)


@pytest.mark.parametrize("kind", ["logreg", "knn"])
def test_other_probes_run_the_same_protocol(tmp_path, kind):
    X, y = _data(n=240)
    cache = _cache(tmp_path, X, y, "m")
    [r] = run_probe([cache], out=tmp_path, config=ProbeConfig(probe=kind, n_bootstrap=100))
    assert r.test["accuracy"] > 0.8 and r.probe == kind and r.name == f"m [{kind}]"
    assert r.selected.startswith("k=" if kind == "knn" else "t=") or r.saturated
    if kind == "logreg":  # linear: saved for RISE, beside (not over) the SVM probe
        assert r.probe_file.endswith("m.logreg.npz")
    else:
        assert r.probe_file == "" and r.t_grid == [1, 5, 10, 20, 50]


def test_few_shot_draws_are_the_models(tmp_path):
    X, y = _data(n=240, signal=0.6)
    test, fold = _split(y)
    f, probe = fit_probe(X, y, test, fold, ["a", "b", "c"],
                         ProbeConfig(few_shot=4, draws=6, **FAST))
    assert f["test_samples"]["fold_pred"].shape == (6, test.sum())
    assert f["few_shot"] == 4 and not f["saturated"] and f["t_grid"] == [1.0]
    assert f["test"]["accuracy"] > 0.45 and f["test_sd"]["accuracy"] > 0  # draws differ
    assert probe.info["n_fit"] == 12 and f["n_train"] == (~test).sum()  # the draw: 4 per class
    with pytest.raises(VlmprobeError, match="1000-shot needs 1000 training images per class"):
        fit_probe(X, y, test, fold, ["a", "b", "c"], ProbeConfig(few_shot=1000, **FAST))


def test_pixels_cache_is_probed_at_each_compared_models_d(tmp_path):
    X, y = _data(n=240, d=48)
    pix = Cache(embeddings=X, labels=y, relpaths=[f"img{i:04d}.png" for i in range(len(X))],
                class_names=["a", "b", "c"], model="pixels", dataset="toyset",
                dataset_fingerprint="f", cache_key="pixels", path=tmp_path / "pixels.h5",
                attrs={"baseline": True, "encoder": {"family": "pixels"}})
    models = [_cache(tmp_path, X[:, :d], y, f"m{d}") for d in (6, 12)]
    res = run_probe([*models, pix], out=tmp_path / "out", config=ProbeConfig(**FAST))
    rows = {r.name: r for r in res}
    assert set(rows) == {"m6", "m12", "pixels (baseline) [PCA to 6]", "pixels (baseline) [PCA to 12]"}
    for d in (6, 12):
        r = rows[f"pixels (baseline) [PCA to {d}]"]
        assert r.embed_dim == d and r.fits["records"][0]["pca_components"] == d
    assert rows["m6"].pca_dim == 0 and "pca_components" not in rows["m6"].fits["records"][0]
    alone = run_probe([pix], out=tmp_path / "o2", config=ProbeConfig(**FAST))
    assert [r.pca_dim for r in alone] == [0] and alone[0].embed_dim == 48
    md = write_table(res, tmp_path / "t")
    assert any("PCA to 6" in p.read_text() for p in md if p.suffix == ".md")


def _grouped_cache(tmp_path, X, y, model, groups, names=("a", "b", "c")):
    cache = _cache(tmp_path, X, y, model)
    cache.class_names = list(names)
    cache.metadata = {"group": list(groups)}
    return cache


def test_a_class_the_data_leaves_empty_is_dropped_recorded_and_said(tmp_path, caplog):
    """ISIC 2019's UNK has no training image: the class view leaves it out under the dataset's
    own name, instead of stopping ("no training sample")."""
    X, y = _data(n=150, k=2)
    cache = _cache(tmp_path, X, y, "m")
    cache.class_names = ["a", "UNK", "b"]
    cache.labels = np.where(y == 1, 2, 0)
    caplog.set_level("INFO", logger="vlmprobe")
    (r,) = run_probe([cache], config=ProbeConfig(**FAST))
    assert r.class_names == ["a", "b"] and r.dropped_classes == ["UNK"] and r.dataset == "toyset"
    assert any("['UNK']" in s and "left out" in s for s in caplog.messages)
    assert r.test["accuracy"] > 0.9


def test_bootstrap_resamples_groups_where_the_cache_has_them(tmp_path, caplog):
    X, y = _data(n=300, signal=0.5)
    groups = [f"p{i // 5}" for i in range(300)]
    groups[:10] = [""] * 10  # no id: each its own group, counted and said
    caplog.set_level("INFO", logger="vlmprobe")
    (auto,) = run_probe([_grouped_cache(tmp_path, X, y, "m", groups)], config=ProbeConfig(**FAST))
    assert auto.bootstrap["unit"] == "group"
    n_test_groups = len({g or f"own{i}" for i, g in enumerate(groups)
                         if f"img{i:04d}.png" in auto.test_samples["ids"]})
    assert auto.bootstrap["n_units"] == n_test_groups < auto.n_test
    assert any("10 of 300 images have no group id" in s for s in caplog.messages)
    (image,) = run_probe([_grouped_cache(tmp_path, X, y, "m", groups)],
                         config=ProbeConfig(bootstrap_unit="image", **FAST))
    assert image.bootstrap == {"unit": "image", "n_units": image.n_test, "n_resamples": 200}
    assert auto.test == image.test and auto.test_ci95 != image.test_ci95
    with pytest.raises(VlmprobeError, match="no group column"):
        run_probe([_cache(tmp_path, X, y, "m")], config=ProbeConfig(bootstrap_unit="group", **FAST))
    with pytest.raises(VlmprobeError, match="Unknown bootstrap unit"):
        fit_probe(X, y, *_split(y), ["a", "b", "c"], ProbeConfig(bootstrap_unit="lesion", **FAST))


def test_comparisons_and_paper_cells_use_every_outer_split(tmp_path):
    X, y = _data(n=300)
    noise = np.random.default_rng(5).normal(size=X.shape).astype(np.float32)
    caches = [_cache(tmp_path, X, y, "good"), _cache(tmp_path, noise, y, "noise")]
    good, bad = run_probe(caches, config=ProbeConfig(repeats=3, **FAST))
    per_split = [r["test"]["macro_f1"] for r in good.repeats]
    assert good.test["macro_f1"] == pytest.approx(np.mean(per_split))
    assert good.test_sd["macro_f1"] == pytest.approx(np.std(per_split))
    lo, hi = good.test_ci95["macro_f1"]
    assert lo <= good.test["macro_f1"] <= hi and f"[{100 * lo:.1f}, " in good.cell("macro_f1")
    from vlmprobe.probe import compare_models

    (c,) = compare_models([good, bad])
    assert c["difference"] == pytest.approx(good.test["macro_f1"] - bad.test["macro_f1"])
    assert len(good.test_samples["pairing"]) == 3


def test_recorded_tol_and_max_iter_are_those_the_fits_used(tmp_path):
    X, y = _data()
    for solver, tol, max_iter in (("fast", 1e-3, 200), ("sklearn", 1e-4, 1000)):
        (r,) = run_probe([_cache(tmp_path, X, y, f"m{solver}")],
                            config=ProbeConfig(solver=solver, n_bootstrap=50))
        settings = r.fits["settings"]
        assert (settings["tol"], settings["max_iter"]) == (r.tol, r.max_iter) == (tol, max_iter)
        saved = json.loads(Path(r.probe_file[:-len(".npz")] + ".json").read_text())
        assert (saved["protocol"]["tol"], saved["protocol"]["max_iter"]) == (tol, max_iter)
    (r,) = run_probe([_cache(tmp_path, X, y, "tight")],
                        config=ProbeConfig(tol=1e-6, n_bootstrap=50))
    assert r.fits["settings"]["tol"] == r.tol == 1e-6


def test_table_captions_say_which_solver_and_bootstrap_unit(tmp_path):
    X, y = _data()
    results = run_probe([_cache(tmp_path, X, y, "m")], config=ProbeConfig(**FAST))
    write_table(results, tmp_path / "t", paper=True)
    notes = (tmp_path / "t" / "probe_results.table.md").read_text()
    assert "solver 'fast'" in notes and "tol 1e-4, max_iter 1000" in notes
    assert "resamples of the test images" in notes
