"""Linear probing by the paper's protocol (docs/protocol.md, the probe), with LinearSVC's objective.

For each of the 5 folds of the training part: z-score on the 4 fitting folds, LinearSVC with
C = t·d/N (N = the fitting folds' size) for every t, macro-F1 on the held-out fold. The t with the
best mean validation macro-F1 wins (ties: smallest t); the 5 fold-models at that t are scored on
the test set (mean ± sd, ddof=0). A scaler + SVM refit on the whole training part with that t is
saved (npz + JSON, no pickle): it is the black box RISE explains. The SVMs are fitted by
:mod:`.svm` (solver "fast": same objective, all t of a fold on one warm-started path) or by
scikit-learn's LinearSVC itself (solver "sklearn", the reference).

Every reported metric carries a bootstrap CI over the test images (:mod:`.stats`), models on
the same split are compared pairwise on the same resamples, and the same protocol runs with
logistic regression or cosine kNN, over several outer splits, per metadata subgroup, or on
shuffled labels (the null control).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

import numpy as np
import sklearn
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from ..data.splits import group_ids
from ..devices import resolve_device
from ..validation import VlmprobeError, config
from . import stats
from .linear import LinearProbe, stack_binary

T_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def c_value(t: float, embed_dim: int, n_fit: int) -> float:
    """The paper's C = t · d / N, N = number of samples the SVM is fitted on."""
    return float(t) * embed_dim / n_fit


SOLVERS = ("fast", "sklearn")


PROBES = ("svm", "logreg", "knn")


K_GRID = (1, 5, 10, 20, 50)


@config
class ProbeConfig:
    """The probe's settings (docs/protocol.md, the probe): the paper's unless changed."""

    t_grid: tuple[float, ...] = T_GRID
    # "fast" (.svm: LinearSVC's objective, its own convergence test) passes the
    # equivalence tests and runs the full protocol 24x faster at N=5k, d=1k, 9 classes
    # (benchmarks/RESULTS.md); "sklearn" is LinearSVC itself, the reference.
    solver: str = "fast"
    # None: the fitting classifier's own (SOLVER_DEFAULTS), filled in here, so the recorded
    # config says what every fit really used
    max_iter: int | None = None
    tol: float | None = None
    # where the fast solver runs: "auto" = torch on CUDA when a GPU is present, else the NumPy
    # path (bit-identical to "numpy"); "numpy", "cpu" (torch), "cuda[:i]"
    device: str = "auto"
    # cross-validation folds of the fast SVM on NumPy fitted at once, in threads (each on one
    # BLAS thread, so results are bit-identical to a serial run): 0 = one per core. The sklearn
    # reference (whose convergence warnings are caught per fit) and torch devices run serially.
    n_jobs: int = 0
    n_bootstrap: int = 2000  # seeded resamples of the test images, shared by every model
    seed: int = 0
    shuffle_labels: bool = False  # null control: training labels permuted, test labels kept
    repeats: int = 1       # outer test splits (split seeds seed, seed+1, ...)
    subgroups: tuple[str, ...] = ()  # metadata columns (e.g. age, sex, site) to break metrics by
    probe: str = "svm"     # the paper's; "logreg" (same C grid) and "knn" (cosine, k_grid) besides
    k_grid: tuple[int, ...] = K_GRID
    select: str = "mean"   # the paper's: one t by mean validation F1; "per_fold": each fold its own
    pca_dim: int = 0       # > 0: PCA to this d inside each fold (the pixels baseline at a model's d)
    few_shot: int = 0      # k > 0: k training images per class, `draws` seeded draws, first t or k
    draws: int = 10
    split: str = "paper"   # "paper" (stratified, ungrouped) | "grouped" (no patient crosses train/test)
    # what the bootstrap resamples: "image", "group" (patients or lesions: images of one group are
    # drawn together) or "auto" (group where the test images' groups are known, else image)
    bootstrap_unit: str = "auto"

    def resolved(self) -> "ProbeConfig":
        """This config with tol and max_iter those the fits use (None: the classifier's own,
        :data:`SOLVER_DEFAULTS`): what fit_probe runs and every output records."""
        tol, max_iter = SOLVER_DEFAULTS.get(_classifier(self), (None, None))
        return replace(self, tol=tol if self.tol is None else self.tol,
                       max_iter=max_iter if self.max_iter is None else self.max_iter)


#: (tol, max_iter) per classifier: the fast solver's (a gradient ≤ tol·‖w‖ puts the objective
#: within tol²/(1 − tol)² of its minimum, :mod:`.svm`), LinearSVC's defaults (the paper's), and
#: the logistic regression's as vlmprobe has always run it; kNN fits nothing iteratively.
SOLVER_DEFAULTS = {"svm/fast": (1e-3, 200), "svm/sklearn": (1e-4, 1000), "logreg": (1e-4, 1000)}


def _classifier(cfg: ProbeConfig) -> str:
    return f"svm/{cfg.solver}" if cfg.probe == "svm" else cfg.probe


BOOTSTRAP_UNITS = ("auto", "image", "group")


def _grid(cfg: ProbeConfig, d: int, n_fit: int) -> list[float]:
    """The hyperparameter per grid point: C = t·d/N for the linear probes, k for kNN."""
    if cfg.probe == "knn":
        return [int(min(k, n_fit)) for k in cfg.k_grid]
    return [c_value(t, d, n_fit) for t in cfg.t_grid]


def _fit_grid(X, y, values, cfg: ProbeConfig) -> list[tuple[object, bool]]:
    """(fitted classifier, converged) per grid value: the one place the probe and solver are
    chosen."""
    if cfg.probe not in PROBES:
        raise VlmprobeError(f"Unknown probe {cfg.probe!r}; choose one of {', '.join(PROBES)}.")
    if cfg.solver not in SOLVERS:
        raise VlmprobeError(f"Unknown solver {cfg.solver!r}; choose one of {', '.join(SOLVERS)}.")
    if cfg.probe == "svm" and cfg.solver == "fast":
        from .svm import fit_path  # imported late: scipy.linalg, threadpoolctl

        _fit_device(cfg)  # a bad or absent device fails here, with the option named
        return [(svm, svm.converged_) for svm in fit_path(X, y, values, tol=cfg.tol,
                                                          max_iter=cfg.max_iter, device=cfg.device)]
    if cfg.device not in ("auto", "numpy"):
        raise VlmprobeError(f"--device {cfg.device} applies to the fast SVM solver only; use "
                            "--probe svm --solver fast, or leave --device at auto.")
    make = {"svm": lambda C: LinearSVC(C=C, max_iter=cfg.max_iter, tol=cfg.tol,
                                       random_state=cfg.seed),
            "logreg": lambda C: LogisticRegression(C=C, max_iter=cfg.max_iter, tol=cfg.tol),
            "knn": lambda k: KNeighborsClassifier(n_neighbors=int(k), metric="cosine")}[cfg.probe]
    fits = []
    for v in values:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = make(v).fit(X, y)
        fits.append((model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)))
    return fits


def _model_info(model, converged: bool, n_fit: int) -> dict:
    """What fitted the probe, with every setting and whether it converged."""
    info = {"class": f"{type(model).__module__}.{type(model).__name__}", **model.get_params(),
            "sklearn_version": sklearn.__version__,
            "n_iter": int(np.max(getattr(model, "n_iter_", 0))), "converged": bool(converged),
            "at_floor": bool(getattr(model, "at_floor_", False))}
    if hasattr(model, "device_"):  # the fast solver: the backend "auto" (or any device) resolved to
        info["device_used"] = model.device_
    if isinstance(model, LinearSVC) and model.dual == "auto":
        # scikit-learn's rule for squared hinge + L2: the dual problem only when N < d.
        info["dual_used"] = n_fit < model.n_features_in_
    return info


_PER_FIT = ("C", "n_neighbors", "n_iter", "converged", "at_floor", "dual_used", "pca_components",
            "pca_variance_kept")


def _fit_record(fits: dict, model, converged: bool, n_fit: int, fold, point, scaler) -> None:
    """Append one fit's record to ``fits``: settings shared by every fit are kept once
    (``settings``: class, sklearn version, dual, tol, max_iter, ...), what varies per fit
    (C or k, iterations, converged, the dual actually used; with PCA the components kept and
    their share of the fold's variance) once per (fold, t) in ``records``."""
    info = _model_info(model, converged, n_fit)
    if isinstance(scaler, Pipeline):
        pca = scaler.named_steps["pca"]
        info.update(pca_components=int(pca.n_components_),
                    pca_variance_kept=float(pca.explained_variance_ratio_.sum()))
    fits.setdefault("settings", {k: v for k, v in info.items() if k not in _PER_FIT})
    fits.setdefault("records", []).append(
        {"fold": fold, "t": point, "n_fit": n_fit, **{k: info[k] for k in _PER_FIT if k in info}})


def _standardizer(cfg: ProbeConfig, X_fit: np.ndarray):
    """StandardScaler, then (``cfg.pca_dim``) PCA and a z-score of its scores, all fitted on the
    fold's training rows only.

    The z-score after PCA gives every component unit variance, as every model row's z-scored
    features have, so C = t·d/N means the same for the pixels baseline as for the models it is
    compared with. PCA keeps at most as many components as the centred rows have rank (rows − 1)
    and as there are features; C = t·d/N still uses the asked d (that of the model compared
    with)."""
    if not cfg.pca_dim:
        return StandardScaler().fit(X_fit)
    k = min(cfg.pca_dim, X_fit.shape[0] - 1, X_fit.shape[1])
    solver = "full" if k >= 0.8 * min(X_fit.shape) else "randomized"
    pipe = Pipeline([("scale", StandardScaler()),
                     ("pca", PCA(n_components=k, svd_solver=solver, random_state=cfg.seed)),
                     ("zscore", StandardScaler())]).fit(X_fit)
    # z-score what transform gives (the randomized PCA's fit_transform differs from it by ~1e-5)
    pipe.named_steps["zscore"].fit(pipe[:-1].transform(X_fit))
    return pipe


def _scores_of(model, X) -> np.ndarray:
    """Per-class scores [n, n_classes]: decision values of linear models, kNN vote shares."""
    if hasattr(model, "decision_function"):
        return _class_scores(model.decision_function(X))
    return model.predict_proba(X)


SCALAR_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "binary_f1",
                  "macro_auroc")


PER_CLASS_METRICS = ("f1", "sensitivity", "specificity", "auroc")


def _class_scores(f: np.ndarray) -> np.ndarray:
    """Decision values [n, n_classes]; a binary SVM's single column f becomes (-f, f)."""
    return stack_binary(f[:, None]) if f.ndim == 1 else f


def _summarize(w, y_true, preds, scores, n_classes, positive) -> tuple[dict, dict, dict, dict]:
    """Observed mean and sd (ddof=0) over the fold-models, 95% bootstrap CI of that mean
    (weights w: one row per resample), and per-class means, for every reported metric."""
    one = np.ones((1, len(y_true)))
    per_fold = [stats.model_metrics(one, y_true, p, s, n_classes, positive)
                for p, s in zip(preds, scores)]
    boot = [stats.model_metrics(w, y_true, p, s, n_classes, positive) for p, s in zip(preds, scores)]
    names = [m for m in SCALAR_METRICS if m in per_fold[0]]
    mean = {m: float(np.mean([f[m][0] for f in per_fold])) for m in names}
    sd = {m: float(np.std([f[m][0] for f in per_fold])) for m in names}
    ci = {m: stats.percentile_ci(np.mean([b[m] for b in boot], axis=0)) for m in names}
    per_class = {m: np.mean([f[m][0] for f in per_fold], axis=0).tolist() for m in PER_CLASS_METRICS}
    return mean, sd, ci, {"per_class": per_class,
                          "boot": {m: np.mean([b[m] for b in boot], axis=0) for m in names}}


def _check_inputs(X, y, test, fold, class_names) -> None:
    """NaN/inf embeddings and classes missing from a fitting set fail here, by name."""
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        raise VlmprobeError(f"{int(bad.sum())} embeddings contain NaN or inf (first rows "
                            f"{np.flatnonzero(bad)[:5].tolist()}); re-extract the cache "
                            "(vlmprobe extract ... --force) or drop those images.")
    for k in sorted(set(fold[~test].tolist())):
        fit = (~test) & (fold != k)
        missing = [class_names[c] for c in range(len(class_names)) if not (y[fit] == c).any()]
        if missing:
            raise VlmprobeError(f"Class(es) {missing} have no training sample outside fold {k}; "
                                "every class needs samples in at least two folds. Merge or drop "
                                "rare classes, or use a coarser --label.")


def _few_shot_sets(y, test, n_classes: int, cfg: ProbeConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cfg.draws`` seeded draws of ``cfg.few_shot`` training images per class (no validation)."""
    rng = np.random.default_rng(cfg.seed)
    train = np.flatnonzero(~test)
    by_class = [train[y[train] == c] for c in range(n_classes)]
    short = [c for c, idx in enumerate(by_class) if len(idx) < cfg.few_shot]
    if short:
        raise VlmprobeError(f"{cfg.few_shot}-shot needs {cfg.few_shot} training images per class; "
                            f"class index(es) {short} have fewer. Lower --few-shot.")
    sets = []
    for _ in range(cfg.draws):
        fit = np.zeros(len(y), bool)
        fit[np.concatenate([rng.choice(idx, cfg.few_shot, replace=False) for idx in by_class])] = True
        sets.append((fit, np.zeros(len(y), bool)))
    return sets


def _map_folds(fit_set, fit_rows: list[np.ndarray], cfg: ProbeConfig) -> list:
    """``fit_set`` on each fold's training rows, in order; the folds in threads (BLAS and
    LAPACK release the GIL) with one BLAS thread each, so a 5-fold path on 5 cores takes the
    time of one fold, and the answers do not depend on ``n_jobs``."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    if cfg.n_jobs < 0:
        raise VlmprobeError(f"n_jobs must be >= 0 (0: one per core); got {cfg.n_jobs}.")
    jobs = min(len(fit_rows), cfg.n_jobs or os.cpu_count() or 1)
    if jobs <= 1 or (cfg.probe, cfg.solver) != ("svm", "fast") or _fit_device(cfg) != "numpy":
        return [fit_set(rows) for rows in fit_rows]
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(fit_set, fit_rows))


def _fit_device(cfg: ProbeConfig) -> str:
    """Where the fit runs: "numpy" unless the fast SVM runs on a torch device."""
    if (cfg.probe, cfg.solver) != ("svm", "fast"):
        return "numpy"
    try:
        return resolve_device(cfg.device, numpy=True)
    except VlmprobeError as err:
        raise VlmprobeError(f"--device: {err}") from None


def _first_max(values: np.ndarray) -> int:
    """Index of the maximum; ties (within 1e-12) go to the first, i.e. the smallest t."""
    return int(np.flatnonzero(values >= values.max() - 1e-12)[0])


def _bootstrap_weights(cfg: ProbeConfig, ids: list[str],
                       clusters: list[str] | None) -> tuple[np.ndarray, dict]:
    """The resample weights [n_bootstrap, n test rows] and what they resample.

    Keyed by image path (unit "image") or by group id (unit "group": each resample draws as many
    groups as the test set has, with replacement, and an image counts as often as its group was
    drawn; an image without a group id is a group of its own), so every model scored on the same
    test images gets the same resamples whatever its row order: comparisons are paired."""
    if cfg.bootstrap_unit not in BOOTSTRAP_UNITS:
        raise VlmprobeError(f"Unknown bootstrap unit {cfg.bootstrap_unit!r}; choose one of "
                            f"{', '.join(BOOTSTRAP_UNITS)}.")
    if cfg.bootstrap_unit == "group" and clusters is None:
        raise VlmprobeError("--bootstrap-unit group needs each test image's group (patient or "
                            "lesion id), and none was given; use --bootstrap-unit image.")
    if clusters is None or cfg.bootstrap_unit == "image":
        rank = np.argsort(np.argsort(np.asarray(ids, dtype=object)))  # sorted position of each row
        w = stats.resample_weights(len(ids), cfg.n_bootstrap, cfg.seed)[:, rank]
        return w, {"unit": "image", "n_units": len(ids), "n_resamples": cfg.n_bootstrap}
    groups = group_ids([str(c) for c in clusters], ids)
    w = stats.resample_weights(len(ids), cfg.n_bootstrap, cfg.seed, groups=groups)
    return w, {"unit": "group", "n_units": int(groups.max()) + 1 if len(groups) else 0,
               "n_resamples": cfg.n_bootstrap,
               "images_without_group": sum(1 for c in clusters if not str(c))}


@dataclass
class _FoldFits:
    """What the cross-validation left: per grid point and fold, the validation F1 and
    predictions and the test scores; the fit records; and the first few-shot draw's model."""

    val_f1: np.ndarray               # [points, folds]
    val_preds: list[list]            # [points][folds]
    test_scores: list[list]          # [points][folds]: [n_test, n_classes]
    fit_log: dict
    unconverged: int = 0
    at_floor: int = 0
    draw0: tuple | None = None       # (model, converged, C, scaler) of the first few-shot draw

    def count(self, model, converged: bool) -> None:
        self.unconverged += not converged
        self.at_floor += bool(getattr(model, "at_floor_", False))


def _cross_validate(X, y, test, sets, points, d: int, cfg: ProbeConfig,
                    n_classes: int) -> _FoldFits:
    """Every grid point on every (fit, validation) set: the folds in parallel (:func:`_map_folds`)."""
    folds = _FoldFits(np.zeros((len(points), len(sets))), [[None] * len(sets) for _ in points],
                      [[None] * len(sets) for _ in points], {})

    def fit_set(fit):
        scaler = _standardizer(cfg, X[fit])
        values = _grid(cfg, d, int(fit.sum()))[:len(points)]
        return scaler, values, _fit_grid(scaler.transform(X[fit]), y[fit], values, cfg)

    for j, ((fit, val), (scaler, values, fits)) in enumerate(zip(sets, _map_folds(
            fit_set, [f for f, _ in sets], cfg))):
        Xt = scaler.transform(X[test])
        Xv = scaler.transform(X[val]) if val.any() else None
        for i, (model, ok) in enumerate(fits):
            folds.count(model, ok)
            _fit_record(folds.fit_log, model, ok, int(fit.sum()), j, points[i], scaler)
            folds.val_preds[i][j] = model.predict(Xv) if val.any() else np.zeros(0, int)
            folds.val_f1[i, j] = f1_score(y[val], folds.val_preds[i][j], average="macro",
                                          labels=np.arange(n_classes),
                                          zero_division=0) if val.any() else 0
            folds.test_scores[i][j] = _scores_of(model, Xt)
        if cfg.few_shot and j == 0:
            folds.draw0 = (model, ok, values[0], scaler)
    return folds


def _refit(X, y, test, sets, best: int, points, d: int, cfg: ProbeConfig, folds: _FoldFits):
    """(model, converged, C, scaler, training rows) of the probe RISE explains: refit on the
    whole training part at the selected t; with few-shot draws, the first draw's model."""
    if cfg.few_shot:  # no refit on all data: the saved probe is the first draw's
        model, ok, C, scaler = folds.draw0
        return model, ok, C, scaler, sets[0][0]
    train = ~test
    scaler = _standardizer(cfg, X[train])
    C = _grid(cfg, d, int(train.sum()))[best]
    # The fast solver reaches a large C cold only slowly; warm-started along the grid it is quick.
    path = ([v for v in _grid(cfg, d, int(train.sum())) if v <= C]
            if (cfg.probe, cfg.solver) == ("svm", "fast") else [C])
    model, ok = _fit_grid(scaler.transform(X[train]), y[train], path, cfg)[path.index(C)]
    folds.count(model, ok)
    _fit_record(folds.fit_log, model, ok, int(train.sum()), "refit", points[best], scaler)
    return model, ok, C, scaler, train


def _subgroup_scores(w, y_test, preds, scores, test_groups, n_classes: int, positive) -> dict:
    """Every metric per value of each ``test_groups`` column, on those rows of the resamples."""
    subgroups = {}
    for column, values in (test_groups or {}).items():
        values = np.asarray([str(v) for v in values], dtype=object)
        subgroups[column] = {}
        for v in sorted(set(values)):
            m = values == v
            g_mean, g_sd, g_ci, g_extra = _summarize(w[:, m], y_test[m], [p[m] for p in preds],
                                                     [sc[m] for sc in scores], n_classes, positive)
            subgroups[column][v] = {"n": int(m.sum()), "test": g_mean, "test_sd": g_sd,
                                    "test_ci95": g_ci, "per_class": g_extra["per_class"]}
    return subgroups


def _saved_probe(model, ok: bool, C: float, scaler, train, class_names, cfg: ProbeConfig,
                 t: float) -> LinearProbe | None:
    """The refit model as plain arrays (None for kNN: nothing linear for RISE to explain)."""
    if not hasattr(model, "coef_"):
        return None
    coef, intercept, std = model.coef_, model.intercept_, scaler
    if isinstance(scaler, Pipeline):  # PCA and its z-score are linear: fold them into the weights
        std, pca, z = (scaler.named_steps[k] for k in ("scale", "pca", "zscore"))
        coef = coef / z.scale_
        intercept = intercept - coef @ z.mean_
        coef, intercept = coef @ pca.components_, intercept - coef @ pca.components_ @ pca.mean_
    n_fit = int(train.sum())
    return LinearProbe(std.mean_, std.scale_, coef, intercept, class_names,
                       {"C": C, "t": t, "n_fit": n_fit, "shuffled_labels": cfg.shuffle_labels,
                        "pca_dim": cfg.pca_dim,
                        cfg.probe: {"solver": cfg.solver, **_model_info(model, ok, n_fit)}})


def fit_probe(X: np.ndarray, y: np.ndarray, test: np.ndarray, fold: np.ndarray,
              class_names: list[str], cfg: ProbeConfig = ProbeConfig(),
              positive_class: str | None = None,
              test_ids: list[str] | None = None,
              test_groups: dict[str, list] | None = None,
              test_clusters: list[str] | None = None) -> tuple[dict, LinearProbe | None]:
    """The protocol on arrays; returns the result fields and the refit probe.

    Steps: cross-validate every grid point (:func:`_cross_validate`), select t, refit
    (:func:`_refit`), score the fold-models and the refit on the test set with bootstrap CIs,
    save the refit as arrays (:func:`_saved_probe`).
    ``test_ids`` (the test images' relative paths) key the bootstrap resamples, so every model
    scored on the same test images gets the same resamples whatever its row order: paired.
    ``test_groups`` maps a metadata column to its value per test row; every metric is then also
    reported per value (on those rows of the same resamples). ``test_clusters``: each test
    row's patient or lesion id ("" unknown), which the bootstrap resamples instead of images
    unless ``cfg.bootstrap_unit`` is "image" (:func:`_bootstrap_weights`).
    """
    cfg = cfg.resolved()
    X, y = np.asarray(X), np.asarray(y)
    n_classes, d = len(class_names), cfg.pca_dim or X.shape[1]
    _check_inputs(X, y, test, fold, class_names)
    if cfg.select not in ("mean", "per_fold"):
        raise VlmprobeError(f"Unknown t selection {cfg.select!r}; choose mean or per_fold.")
    positive = class_names.index(positive_class) if positive_class in class_names else None
    if n_classes != 2:
        positive = None
    if cfg.shuffle_labels:  # the null control: training labels permuted, test labels true
        y = y.copy()
        y[~test] = np.random.default_rng(cfg.seed).permutation(y[~test])
    points = list(cfg.k_grid if cfg.probe == "knn" else cfg.t_grid)  # t, or k for kNN
    if cfg.few_shot:  # the "fold-models" are models fitted on few-shot draws at the first point
        points, sets = points[:1], _few_shot_sets(y, test, n_classes, cfg)
    else:
        sets = [((~test) & (fold != k), fold == k) for k in sorted(set(fold[~test].tolist()))]
    folds = _cross_validate(X, y, test, sets, points, d, cfg, n_classes)

    mean_val = folds.val_f1.mean(1)
    best = _first_max(mean_val)
    saturated = not cfg.few_shot and all(
        np.array_equal(folds.val_preds[i][j], folds.val_preds[0][j])
        for i in range(len(points)) for j in range(len(sets)))
    # The paper's choice: one t for every fold (best mean). Variant: each fold-model at its own
    # best t (the refit then uses the mean's t).
    per_fold = [_first_max(folds.val_f1[:, j]) if cfg.select == "per_fold" else best
                for j in range(len(sets))]
    model, ok, C, scaler, train = _refit(X, y, test, sets, best, points, d, cfg, folds)
    refit_scores = _scores_of(model, scaler.transform(X[test]))

    y_test, scores = y[test], [folds.test_scores[i][j] for j, i in enumerate(per_fold)]
    preds = [s.argmax(1) for s in scores]
    ids = list(test_ids) if test_ids is not None else [f"{i:09d}" for i in np.flatnonzero(test)]
    w, bootstrap = _bootstrap_weights(cfg, ids, test_clusters)
    test_mean, test_sd, test_ci, extra = _summarize(w, y_test, preds, scores, n_classes, positive)
    refit_mean, _, refit_ci, _ = _summarize(w, y_test, [refit_scores.argmax(1)], [refit_scores],
                                            n_classes, positive)
    fields = dict(
        class_names=class_names, n_train=int((~test).sum()), n_test=int(test.sum()), embed_dim=d,
        probe=cfg.probe, few_shot=cfg.few_shot, t_grid=points, val_macro_f1=mean_val.tolist(),
        val_macro_f1_sd=folds.val_f1.std(1).tolist(), selected_t=points[best],
        saturated=saturated, selected_per_fold=[points[i] for i in per_fold],
        test=test_mean, test_sd=test_sd, test_ci95=test_ci, per_class=extra["per_class"],
        subgroups=_subgroup_scores(w, y_test, preds, scores, test_groups, n_classes, positive),
        all_converged=folds.unconverged == 0, n_unconverged=folds.unconverged,
        n_at_floor=folds.at_floor, fits=folds.fit_log, refit_C=C,
        solver=cfg.solver if cfg.probe == "svm" else "", tol=cfg.tol, max_iter=cfg.max_iter,
        bootstrap=bootstrap, refit_test=refit_mean,
        refit_test_macro_f1_ci95=refit_ci["macro_f1"],
        positive_class=positive_class if positive is not None else None,
        shuffled_labels=cfg.shuffle_labels,
        test_samples={"ids": ids, "y": y_test, "fold_pred": np.stack(preds),
                      "fold_scores": np.stack(scores), "refit_pred": refit_scores.argmax(1),
                      "refit_scores": refit_scores, "boot": extra["boot"]},
    )
    return fields, _saved_probe(model, ok, C, scaler, train, class_names, cfg, points[best])
