"""Weighted metrics equal scikit-learn's; bootstrap, paired comparison and Holm behave."""
import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score, recall_score,
                             roc_auc_score)

from vlmprobe.probe.stats import (auroc, holm, label_metrics, paired_difference, percentile_ci, resample_weights)


@pytest.mark.parametrize("k", [2, 4])
def test_unit_weight_metrics_equal_sklearn(k):
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, k, 200))
    pred[pred == k - 1] = 0  # a class never predicted: F1 0 by zero_division
    m = label_metrics(np.ones((1, 200)), y, pred, k, positive=1)
    labels = np.arange(k)
    assert m["accuracy"][0] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"][0] == pytest.approx(f1_score(y, pred, average="macro", labels=labels,
                                                      zero_division=0))
    assert m["weighted_f1"][0] == pytest.approx(f1_score(y, pred, average="weighted",
                                                         labels=labels, zero_division=0))
    assert m["binary_f1"][0] == pytest.approx(f1_score(y, pred, average=None, labels=labels,
                                                       zero_division=0)[1])
    assert m["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(y, pred))
    np.testing.assert_allclose(m["sensitivity"][0], recall_score(y, pred, average=None,
                                                                 labels=labels, zero_division=0))
    spec = [recall_score(y != c, pred != c) for c in labels]
    np.testing.assert_allclose(m["specificity"][0], spec)


def test_weights_are_repetitions():
    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    w = rng.integers(0, 4, 50).astype(float)
    rep = np.repeat(np.arange(50), w.astype(int))
    m = label_metrics(w[None], y, pred, 3)
    assert m["macro_f1"][0] == pytest.approx(f1_score(y[rep], pred[rep], average="macro"))
    scores = rng.normal(size=(50, 3))
    scores[:10, 0] = 0.5  # ties count half
    a = auroc(w[None], y, scores)[0]
    np.testing.assert_allclose(a, [roc_auc_score(y[rep] == c, scores[rep, c]) for c in range(3)])


def test_auroc_is_nan_for_a_missing_class():
    y = np.zeros(10, int)
    assert np.isnan(auroc(np.ones((1, 10)), y, np.random.default_rng(0).normal(size=(10, 2)))).all()


def test_resamples_are_seeded_and_ci_covers_the_estimate():
    w = resample_weights(100, 500, seed=3)
    assert w.shape == (500, 100) and (w.sum(1) == 100).all()
    np.testing.assert_array_equal(w, resample_weights(100, 500, seed=3))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    pred = np.where(rng.random(100) < 0.8, y, 1 - y)
    acc = label_metrics(w, y, pred, 2)["accuracy"]
    lo, hi = percentile_ci(acc)
    assert lo < (pred == y).mean() < hi and hi - lo < 0.25


def test_paired_difference_detects_a_better_model_and_not_a_copy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.9, y, rng.integers(0, 3, 300))
    bad = np.where(rng.random(300) < 0.5, y, rng.integers(0, 3, 300))
    w = resample_weights(300, 1000, seed=0)
    fa, fb = (label_metrics(w, y, p, 3)["macro_f1"] for p in (good, bad))
    d = paired_difference(fa, fb, observed=0.3)
    assert d["p"] < 0.01 and d["ci_low"] > 0
    same = paired_difference(fa, fa, observed=0.0)
    assert same["p"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0


def test_holm_adjusts_step_down():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
