"""Test-set metrics with bootstrap uncertainty and paired model comparisons.

Every metric is computed from resampling *weights* (how often each test image is drawn), so one
seeded set of 2,000 resamples serves every metric, every fold-model and every model of a dataset:
the comparison of two models on the same resample is paired by construction. With unit weights the
metrics equal scikit-learn's (tests/probe/test_probe_stats.py).
"""
from __future__ import annotations

import numpy as np

LEVEL = 0.95


def resample_weights(n: int, n_boot: int, seed: int, groups: np.ndarray | None = None
                     ) -> np.ndarray:
    """[n_boot, n] multiplicities of n test images drawn with replacement (seeded).

    ``groups`` (an integer 0..G-1 per image: patient, lesion) makes it the cluster bootstrap:
    each resample draws G groups with replacement and an image counts as often as its group was
    drawn. Images of one patient are correlated, so resampling them one by one understates the
    spread of a metric (a CI too narrow, comparisons too confident); whole groups do not."""
    rng = np.random.default_rng(seed)
    units = n if groups is None else int(np.max(groups, initial=-1)) + 1
    idx = rng.integers(0, units, size=(n_boot, units))
    counts = np.bincount((idx + units * np.arange(n_boot)[:, None]).ravel(),
                         minlength=n_boot * units).reshape(n_boot, units).astype(np.float64)
    return counts if groups is None else counts[:, np.asarray(groups)]


def _confusion(w: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Weighted confusion matrices [B, k, k] (rows: true class)."""
    onehot = np.zeros((len(y_true), k * k))
    onehot[np.arange(len(y_true)), y_true * k + y_pred] = 1.0
    return (w @ onehot).reshape(len(w), k, k)


def _div(a, b):
    """a / b, 0 where b == 0 (scikit-learn's zero_division=0)."""
    return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)


def label_metrics(w: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int,
                  positive: int | None = None) -> dict[str, np.ndarray]:
    """Metrics of hard predictions under each row of weights w [B, n]: arrays [B] (or [B, k]
    for the per-class ones). Classes absent from both truth and prediction get F1 0, as
    scikit-learn's ``labels=range(k), zero_division=0``."""
    cm = _confusion(w, np.asarray(y_true), np.asarray(y_pred), k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(2), cm.sum(1)
    total = support.sum(1)
    f1 = _div(2 * tp, support + predicted)
    recall = _div(tp, support)
    tn = total[:, None] - support - predicted + tp
    out = {"accuracy": _div(tp.sum(1), total),
           "macro_f1": f1.mean(1),
           "weighted_f1": _div((f1 * support).sum(1), total),
           "balanced_accuracy": _div((recall * (support > 0)).sum(1), (support > 0).sum(1)),
           "sensitivity": recall,
           "specificity": _div(tn, total[:, None] - support),
           "f1": f1}
    if positive is not None:
        out["binary_f1"] = f1[:, positive]
    return out


def auroc(w: np.ndarray, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC per class under each row of weights: [B, k]. ``scores`` [n, k] are
    per-class decision values; AUROC is the weighted Mann-Whitney statistic, ties counting half.
    NaN for a class with no positive or no negative weight."""
    out = np.empty((len(w), scores.shape[1]))
    for c in range(scores.shape[1]):
        order = np.argsort(scores[:, c], kind="stable")
        s, pos = scores[order, c], (np.asarray(y_true)[order] == c)
        ws = w[:, order]
        wneg = ws * ~pos
        cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(wneg, axis=1)], axis=1)
        left, right = np.searchsorted(s, s, "left"), np.searchsorted(s, s, "right")
        below = cum[:, left] + 0.5 * (cum[:, right] - cum[:, left])
        num = (ws * pos * below).sum(1)
        den = (ws * pos).sum(1) * wneg.sum(1)
        out[:, c] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def model_metrics(w: np.ndarray, y_true: np.ndarray, pred: np.ndarray, scores: np.ndarray,
                  k: int, positive: int | None) -> dict[str, np.ndarray]:
    """Every reported metric of one model under each weight row: label metrics plus per-class
    and macro (mean over classes with both positives and negatives) one-vs-rest AUROC."""
    out = label_metrics(w, y_true, pred, k, positive)
    aucs = auroc(w, y_true, scores)
    out["auroc"] = aucs
    defined = np.isfinite(aucs)
    n_defined = defined.sum(1)
    out["macro_auroc"] = np.where(n_defined > 0, np.where(defined, aucs, 0).sum(1)
                                  / np.maximum(n_defined, 1), np.nan)
    return out


def percentile_ci(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval; NaN where the metric is undefined on every resample (e.g. AUROC
    of a subgroup holding a single class)."""
    if np.isnan(samples).all():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(samples, [(1 - level) / 2 * 100, (1 + level) / 2 * 100], axis=0)
    return float(lo), float(hi)


def paired_difference(a: np.ndarray, b: np.ndarray, observed: float,
                      level: float = LEVEL) -> dict[str, float]:
    """Paired bootstrap of metric(a) - metric(b) over the same resamples (of images or of
    groups): the percentile CI of the difference, and the two-sided p of a bootstrap test of
    "no difference" by centring (Hall & Wilson 1991): the resampled differences minus the
    observed one, d* - d, stand for the null distribution of d, and p is the share of them at
    least as far from 0 as d, (1 + #{|d* - d| >= |d|}) / (B + 1). Resamples where the metric is
    undefined (NaN) are left out.

    (Reading p off the percentile interval, as vlmprobe did before, is no test: resampled
    differences that tie at exactly 0, common for hard metrics of two similar models, count
    on both sides, and p is then too large.)"""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = percentile_ci(d, level)
    d = d[np.isfinite(d)]
    if not np.isfinite(observed) or not len(d):
        return {"difference": float(observed), "ci_low": lo, "ci_high": hi, "p": float("nan")}
    # a few ulps of slack, so that |d* - d| equal to |d| in exact arithmetic counts as extreme
    extreme = np.abs(d - observed) >= abs(observed) - 1e-12
    p = (1 + np.sum(extreme)) / (len(d) + 1)
    return {"difference": float(observed), "ci_low": lo, "ci_high": hi, "p": float(p)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error), same order as given."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adj = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adj, 1.0)
    return out.tolist()
