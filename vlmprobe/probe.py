"""Linear probing by the paper's protocol (protocol.md §2), with LinearSVC's objective.

For each of the 5 folds of the training part: z-score on the 4 fitting folds, LinearSVC with
C = t·d/N (N = the fitting folds' size) for every t, macro-F1 on the held-out fold. The t with the
best mean validation macro-F1 wins (ties: smallest t); the 5 fold-models at that t are scored on
the test set (mean ± sd, ddof=0). A scaler + SVM refit on the whole training part with that t is
saved (npz + JSON, no pickle): it is the black box RISE explains. The SVMs are fitted by
``vlmprobe.svm`` (solver "fast": same objective, all t of a fold on one warm-started path) or by
scikit-learn's LinearSVC itself (solver "sklearn", the reference).

Every reported metric carries a bootstrap CI over the test images (``vlmprobe.stats``), models on
the same split are compared pairwise on the same resamples, and the same protocol runs with
logistic regression or cosine kNN, over several outer splits, per metadata subgroup, or on
shuffled labels (the null control).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import LinearSVC

from . import stats
from .cache import Cache, describe_fingerprint_difference
from .paths import stage_dir
from .provenance import provenance
from .validation import VlmprobeError

T_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def c_value(t: float, embed_dim: int, n_fit: int) -> float:
    """The paper's C = t · d / N, N = number of samples the SVM is fitted on."""
    return float(t) * embed_dim / n_fit


SOLVERS = ("fast", "sklearn")
PROBES = ("svm", "logreg", "knn")
K_GRID = (1, 5, 10, 20, 50)


@dataclass(frozen=True)
class ProbeConfig:
    t_grid: tuple[float, ...] = T_GRID
    # "fast" (vlmprobe.svm: LinearSVC's objective, its own convergence test) passes the
    # equivalence tests and runs the full protocol 24x faster at N=5k, d=1k, 9 classes
    # (benchmarks/RESULTS.md); "sklearn" is LinearSVC itself, the reference.
    solver: str = "fast"
    max_iter: int = 1000   # LinearSVC's defaults, for solver="sklearn" (and logreg), recorded so
    tol: float = 1e-4      # unconverged fits are visible
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
        from .svm import fit_path

        _fit_device(cfg)  # a bad or absent device fails here, with the option named
        return [(svm, svm.converged_) for svm in fit_path(X, y, values, device=cfg.device)]
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
            "n_iter": int(np.max(getattr(model, "n_iter_", 0))), "converged": bool(converged)}
    if hasattr(model, "device_"):  # the fast solver: the backend "auto" (or any device) resolved to
        info["device_used"] = model.device_
    if isinstance(model, LinearSVC) and model.dual == "auto":
        # scikit-learn's rule for squared hinge + L2: the dual problem only when N < d.
        info["dual_used"] = n_fit < model.n_features_in_
    return info


_PER_FIT = ("C", "n_neighbors", "n_iter", "converged", "dual_used", "pca_components",
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
    """StandardScaler, then (``cfg.pca_dim``) PCA, fitted on the fold's training rows only.

    PCA keeps at most as many components as the fold has rows and features; C = t·d/N still
    uses the asked d (that of the model compared with)."""
    if not cfg.pca_dim:
        return StandardScaler().fit(X_fit)
    k = min(cfg.pca_dim, *X_fit.shape)
    return Pipeline([("scale", StandardScaler()),
                     ("pca", PCA(n_components=k, svd_solver="randomized" if k < min(X_fit.shape)
                                 else "full", random_state=cfg.seed))]).fit(X_fit)


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
    return _stack_binary(f[:, None]) if f.ndim == 1 else f


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


@dataclass
class LinearProbe:
    """Scaler + linear SVM as plain arrays: decision = ((x - mean) / scale) @ coef.T + intercept."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray       # [K, d] (K = 1 for a binary SVM)
    intercept: np.ndarray  # [K]
    class_names: list[str]
    info: dict = field(default_factory=dict)

    def decision_function(self, X):
        """Per-class scores [B, n_classes]; binary SVMs give (-f, f). Works on numpy or torch."""
        z = (X - self._like(self.mean, X)) / self._like(self.scale, X)
        f = z @ self._like(self.coef, X).T + self._like(self.intercept, X)
        return _stack_binary(f) if self.coef.shape[0] == 1 else f

    @staticmethod
    def _like(a, X):
        if isinstance(X, np.ndarray):
            return a
        import torch
        return torch.as_tensor(a, dtype=X.dtype, device=X.device)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.decision_function(X)).argmax(1)

    def save(self, stem: Path) -> Path:
        """Write ``<stem>.npz`` (arrays) and ``<stem>.json`` (class names, C, provenance)."""
        npz, sidecar = _stem_files(stem)
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept)
        sidecar.write_text(json.dumps({"class_names": self.class_names, **self.info}, indent=2,
                                      default=str))
        return npz

    @classmethod
    def load(cls, stem: Path) -> "LinearProbe":
        npz, sidecar = _stem_files(stem)
        if not npz.is_file():
            raise VlmprobeError(f"No saved probe at {npz}; run `vlmprobe probe` on this cache first.")
        arrays = np.load(npz, allow_pickle=False)
        info = json.loads(sidecar.read_text())
        return cls(arrays["mean"], arrays["scale"], arrays["coef"], arrays["intercept"],
                   info.pop("class_names"), info)


def _stem_files(stem: Path) -> tuple[Path, Path]:
    """Stems like ``model.label-word`` keep their dots (no ``with_suffix``)."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def _stack_binary(f):
    if isinstance(f, np.ndarray):
        return np.concatenate([-f, f], axis=1)
    import torch
    return torch.cat([-f, f], dim=1)


def probe_path(cache: Cache, label_view: str, out_dir: Path | None = None) -> Path:
    suffix = "" if label_view == "class" else f".label-{label_view}"
    return (stage_dir(cache.path, cache.dataset, "probe", out_dir)
            / f"{cache.output_name}{suffix}")


@dataclass
class ProbeResult:
    model: str
    dataset: str
    label_view: str
    baseline: bool
    class_names: list[str]
    n_train: int
    n_test: int
    embed_dim: int
    probe: str                         # svm (the paper's), logreg or knn
    few_shot: int                      # k > 0: models are few-shot draws, not fold-models
    t_grid: list[float]                # C = t·d/N; for kNN the k grid
    val_macro_f1: list[float]          # mean over folds, per t
    val_macro_f1_sd: list[float]
    selected_t: float
    saturated: bool
    selected_per_fold: list[float]     # the t of each fold-model (all equal unless select=per_fold)
    test: dict[str, float]             # metric -> mean over the 5 fold-models
    test_sd: dict[str, float]          # ddof=0
    test_ci95: dict[str, tuple[float, float]]  # bootstrap over test images of that mean
    per_class: dict[str, list[float]]  # f1/sensitivity/specificity/auroc, fold-model mean
    all_converged: bool
    n_unconverged: int
    refit_C: float                     # C of the refit linear model, k for kNN
    refit_test: dict[str, float]
    refit_test_macro_f1_ci95: tuple[float, float]
    positive_class: str | None
    subgroups: dict = field(default_factory=dict)  # column -> value -> n, test, test_sd, test_ci95
    shuffled_labels: bool = False
    probe_file: str = ""
    predictions_file: str = ""
    repeats: list[dict] = field(default_factory=list)   # one entry per outer test split
    split: str = "paper"   # the grouping of the train/test split (vlmprobe.splits.GROUPINGS)
    pca_dim: int = 0   # the pixels baseline: PCA to this d inside each fold
    fits: dict = field(default_factory=dict)  # settings once + per (fold, t) C, n_iter, converged
    intensity_pipeline: str = ""  # how the cache's pixels were decoded (8-bit, float, DICOM window)
    test_samples: dict = field(default_factory=dict, repr=False)  # arrays; not written to JSON

    @property
    def name(self) -> str:
        return (self.model + (" (baseline)" if self.baseline else "")
                + (f" [PCA to {self.pca_dim}]" if self.pca_dim else "")
                + ("" if self.probe == "svm" else f" [{self.probe}]")
                + (f" [{self.few_shot}-shot]" if self.few_shot else "")
                + (" (shuffled labels)" if self.shuffled_labels else ""))

    @property
    def selected(self) -> str:
        return "saturated" if self.saturated else f"{'k' if self.probe == 'knn' else 't'}={self.selected_t:g}"

    def cell(self, m: str, ci: bool = True) -> str:
        """'mean ± sd [lo, hi]' in percent; over the outer splits when there are several."""
        if m not in self.test:
            return "n/a"
        if len(self.repeats) > 1:
            vals = [r["test"][m] for r in self.repeats]
            return f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f} ({len(vals)} splits)"
        lo, hi = self.test_ci95[m]
        return (f"{100 * self.test[m]:.1f} ± {100 * self.test_sd[m]:.1f}"
                + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if ci else ""))

    def row(self) -> dict:
        lo, hi = self.refit_test_macro_f1_ci95
        return {"model": self.name,
                "dataset": self.dataset, "label": self.label_view, "split": self.split,
                "N_train": self.n_train,
                "N_test": self.n_test, "d": self.embed_dim,
                "selected": self.selected,
                "accuracy %": self.cell("accuracy"), "macro-F1 %": self.cell("macro_f1"),
                "weighted-F1 %": self.cell("weighted_f1"),
                "binary-F1 %": self.cell("binary_f1") if self.positive_class else "n/a",
                "balanced acc. %": self.cell("balanced_accuracy"),
                "macro-AUROC %": self.cell("macro_auroc"),
                "refit macro-F1 % [95% CI]": f"{100 * self.refit_test['macro_f1']:.1f} "
                                             f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                "converged": "yes" if self.all_converged else f"no ({self.n_unconverged} fits)"}


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
    from .svm import resolve_device

    try:
        return resolve_device(cfg.device)
    except ValueError as err:
        raise VlmprobeError(f"--device: {err}") from None


def _first_max(values: np.ndarray) -> int:
    """Index of the maximum; ties (within 1e-12) go to the first, i.e. the smallest t."""
    return int(np.flatnonzero(values >= values.max() - 1e-12)[0])


def fit_probe(X: np.ndarray, y: np.ndarray, test: np.ndarray, fold: np.ndarray,
              class_names: list[str], cfg: ProbeConfig = ProbeConfig(),
              positive_class: str | None = None,
              test_ids: list[str] | None = None,
              test_groups: dict[str, list] | None = None) -> tuple[dict, LinearProbe]:
    """The protocol on arrays; returns the result fields and the refit probe.

    ``test_ids`` (the test images' relative paths) key the bootstrap resamples, so every model
    scored on the same test images gets the same resamples whatever its row order: paired.
    ``test_groups`` maps a metadata column to its value per test row; every metric is then also
    reported per value (on those rows of the same resamples).
    """
    X, y = np.asarray(X), np.asarray(y)
    n_classes, d = len(class_names), cfg.pca_dim or X.shape[1]
    _check_inputs(X, y, test, fold, class_names)
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
    val_f1 = np.zeros((len(points), len(sets)))
    val_preds = [[None] * len(sets) for _ in points]
    test_scores = [[None] * len(sets) for _ in points]
    unconverged, fit_log = 0, {}

    def fit_set(fit):
        scaler = _standardizer(cfg, X[fit])
        values = _grid(cfg, d, int(fit.sum()))[:len(points)]
        return scaler, values, _fit_grid(scaler.transform(X[fit]), y[fit], values, cfg)

    for j, ((fit, val), (scaler, values, fits)) in enumerate(zip(sets, _map_folds(
            fit_set, [f for f, _ in sets], cfg))):
        Xt = scaler.transform(X[test])
        Xv = scaler.transform(X[val]) if val.any() else None
        for i, (svm, ok) in enumerate(fits):
            unconverged += not ok
            _fit_record(fit_log, svm, ok, int(fit.sum()), j, points[i], scaler)
            val_preds[i][j] = svm.predict(Xv) if val.any() else np.zeros(0, int)
            val_f1[i, j] = f1_score(y[val], val_preds[i][j], average="macro",
                                    labels=np.arange(n_classes), zero_division=0) if val.any() else 0
            test_scores[i][j] = _scores_of(svm, Xt)
        if cfg.few_shot and j == 0:
            draw0 = (svm, ok, values[0], scaler)
    mean_val = val_f1.mean(1)
    if cfg.select not in ("mean", "per_fold"):
        raise VlmprobeError(f"Unknown t selection {cfg.select!r}; choose mean or per_fold.")
    best = _first_max(mean_val)
    saturated = not cfg.few_shot and all(np.array_equal(val_preds[i][j], val_preds[0][j])
                                         for i in range(len(points)) for j in range(len(sets)))
    train = sets[0][0] if cfg.few_shot else ~test
    if cfg.few_shot:  # no refit on all data: the saved probe is the first draw's
        svm, ok, C, scaler = draw0
    else:  # refit on the whole training part with the selected t: the probe RISE explains
        scaler = _standardizer(cfg, X[train])
        C = _grid(cfg, d, int(train.sum()))[best]
        # The fast solver reaches a large C cold only slowly; warm-started along the grid it is quick.
        path = ([v for v in _grid(cfg, d, int(train.sum())) if v <= C]
                if (cfg.probe, cfg.solver) == ("svm", "fast") else [C])
        svm, ok = _fit_grid(scaler.transform(X[train]), y[train], path, cfg)[path.index(C)]
        unconverged += not ok
        _fit_record(fit_log, svm, ok, int(train.sum()), "refit", points[best], scaler)
    refit_scores = _scores_of(svm, scaler.transform(X[test]))

    # The paper's choice: one t for every fold (best mean). Variant: each fold-model at its own
    # best t (the refit then uses the mean's t).
    per_fold = [_first_max(val_f1[:, j]) if cfg.select == "per_fold" else best
                for j in range(len(sets))]
    y_test, scores = y[test], [test_scores[i][j] for j, i in enumerate(per_fold)]
    preds = [s.argmax(1) for s in scores]
    ids = list(test_ids) if test_ids is not None else [f"{i:09d}" for i in np.flatnonzero(test)]
    rank = np.argsort(np.argsort(np.asarray(ids, dtype=object)))  # sorted position of each row
    w = stats.resample_weights(len(ids), cfg.n_bootstrap, cfg.seed)[:, rank]
    test_mean, test_sd, test_ci, extra = _summarize(w, y_test, preds, scores, n_classes, positive)
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
    refit_mean, _, refit_ci, _ = _summarize(w, y_test, [refit_scores.argmax(1)], [refit_scores],
                                            n_classes, positive)
    fields = dict(
        class_names=class_names, n_train=int((~test).sum()), n_test=int(test.sum()), embed_dim=d,
        probe=cfg.probe, few_shot=cfg.few_shot, t_grid=points, val_macro_f1=mean_val.tolist(),
        val_macro_f1_sd=val_f1.std(1).tolist(), selected_t=points[best], saturated=saturated,
        selected_per_fold=[points[i] for i in per_fold],
        test=test_mean, test_sd=test_sd, test_ci95=test_ci, per_class=extra["per_class"],
        subgroups=subgroups,
        all_converged=unconverged == 0, n_unconverged=unconverged, fits=fit_log, refit_C=C,
        refit_test=refit_mean, refit_test_macro_f1_ci95=refit_ci["macro_f1"],
        positive_class=positive_class if positive is not None else None,
        shuffled_labels=cfg.shuffle_labels,
        test_samples={"ids": ids, "y": y_test, "fold_pred": np.stack(preds),
                      "fold_scores": np.stack(scores), "refit_pred": refit_scores.argmax(1),
                      "refit_scores": refit_scores, "boot": extra["boot"]},
    )
    if not hasattr(svm, "coef_"):  # kNN: nothing linear to save for RISE
        return fields, None
    coef, intercept, std = svm.coef_, svm.intercept_, scaler
    if isinstance(scaler, Pipeline):  # PCA is linear: fold it into the probe's weights
        std, pca = scaler.named_steps["scale"], scaler.named_steps["pca"]
        coef, intercept = coef @ pca.components_, intercept - coef @ pca.components_ @ pca.mean_
    probe = LinearProbe(std.mean_, std.scale_, coef, intercept, class_names,
                        {"C": C, "t": points[best], "n_fit": int(train.sum()),
                         "shuffled_labels": cfg.shuffle_labels, "pca_dim": cfg.pca_dim,
                         cfg.probe: {"solver": cfg.solver, **_model_info(svm, ok, int(train.sum()))}})
    return fields, probe


def _check_same_dataset_files(caches: list[Cache]) -> None:
    """Caches of one dataset must come from identical files, or the shared split lies."""
    first: dict[str, Cache] = {}
    for c in caches:  # each label view (its own fingerprint and splits) on its own
        ref = first.setdefault(c.dataset + c.view_tag, c)
        if c.dataset_fingerprint != ref.dataset_fingerprint:
            raise VlmprobeError(
                f"Caches of dataset {c.dataset!r} were extracted from different files: {ref.path} "
                f"vs {c.path}: {describe_fingerprint_difference(ref, c)}. Re-extract one of them "
                "from the same dataset copy (vlmprobe extract ... --force).")


def compare_models(results: list[ProbeResult], metric: str = "macro_f1") -> list[dict]:
    """Paired bootstrap of every pair of models scored on the same test images (same dataset,
    label view and test ids; same resamples by construction), Holm-corrected per group."""
    groups: dict[tuple, list[ProbeResult]] = {}
    for r in results:
        if r.test_samples:
            groups.setdefault((r.dataset, r.label_view, tuple(sorted(r.test_samples["ids"]))),
                              []).append(r)
    out = []
    for (dataset, view, _), rs in groups.items():
        pairs = []
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                a, b = rs[i], rs[j]
                d = stats.paired_difference(a.test_samples["boot"][metric],
                                            b.test_samples["boot"][metric],
                                            a.test[metric] - b.test[metric])
                pairs.append({"dataset": dataset, "label": view, "metric": metric,
                              "model_a": a.name, "model_b": b.name, **d})
        for p, adj in zip(pairs, stats.holm([p["p"] for p in pairs])):
            p["p_holm"] = adj
        out += pairs
    return out


def _significant_below_best(results: list[ProbeResult], comparisons: list[dict], metric: str):
    """Names per (dataset, label) whose metric is below that column's best with Holm p < 0.05."""
    marked = set()
    for c in comparisons:
        if c["metric"] != metric or c["p_holm"] >= 0.05:
            continue
        col = [r for r in results if (r.dataset, r.label_view) == (c["dataset"], c["label"])]
        best = max(col, key=lambda r: r.test[metric]).name
        if best in (c["model_a"], c["model_b"]):
            marked.add((c["dataset"], c["label"], c["model_b"] if c["model_a"] == best else c["model_a"]))
    return marked


def _write_grid(path_stem: Path, header: list[str], rows: list[list[str]], notes: str) -> list[Path]:
    """The same table as Markdown, CSV and LaTeX (booktabs)."""
    import csv

    md, csv_path, tex = (path_stem.with_name(path_stem.name + ext) for ext in (".md", ".csv", ".tex"))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md.write_text("\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n\n" + notes + "\n")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)

    def esc(text: str) -> str:
        for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"),
                     ("#", "\\#"), ("±", "$\\pm$"), ("†", "$^\\dagger$")):
            text = text.replace(a, b)
        return text
    tex.write_text("\\begin{tabular}{" + "l" * len(header) + "}\n\\toprule\n"
                   + " & ".join(esc(h) for h in header) + " \\\\\n\\midrule\n"
                   + "".join(" & ".join(esc(c) for c in r) + " \\\\\n" for r in rows)
                   + "\\bottomrule\n\\end{tabular}\n% " + notes.replace("\n", " ") + "\n")
    return [md, csv_path, tex]


def write_table(results: list[ProbeResult], out_dir: Path, name: str = "probe_results",
                paper: bool = False) -> tuple[Path, Path]:
    """Writes, under out_dir: ``<name>.{md,csv}`` (one row per model × dataset × label view, every
    metric), ``<name>.table.{md,csv,tex}`` (Tables-3/4 style: rows models, columns datasets,
    accuracy and macro-F1 with sd and CI, pairwise differences marked), ``<name>.comparisons.{md,csv,tex}``
    and ``<name>.json`` (everything, with provenance); with ``paper``, ``<name>.paper.{md,csv,tex}``
    (see ``compare_paper``). Returns the first two paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    cols = list(rows[0])
    notes = ("Test metrics: mean ± sd (ddof=0) of the 5 fold-models at the selected t on the "
             "held-out 20% test set, [95% percentile bootstrap CI of that mean over seeded "
             "resamples of the test images (2,000 unless --bootstrap says otherwise)]; with several outer splits: mean ± sd over splits. "
             "t: C = t·d/N chosen by mean validation macro-F1 (ties → smallest t); 'saturated' = "
             "every t gave identical validation predictions. refit: scaler + SVM refit on the "
             "whole training part (the probe RISE explains).")
    md, csv_path, _ = _write_grid(out_dir / name, cols, [[str(r[c]) for c in cols] for r in rows],
                                  notes)
    comparisons = compare_models(results)
    marked = _significant_below_best(results, comparisons, "macro_f1")
    columns = list(dict.fromkeys((r.dataset, r.label_view) for r in results))
    models = list(dict.fromkeys(r.name for r in results))
    by_key = {(r.name, r.dataset, r.label_view): r for r in results}
    header = ["model"] + [f"{ds}{'' if v == 'class' else f' [{v}]'} {m}" for ds, v in columns
                          for m in ("accuracy %", "macro-F1 %")]
    grid = []
    for model in models:
        row = [model]
        for ds, v in columns:
            r = by_key.get((model, ds, v))
            row += (["", ""] if r is None else
                    [r.cell("accuracy"), r.cell("macro_f1") + (" †" if (ds, v, model) in marked else "")])
        grid.append(row)
    _write_grid(out_dir / f"{name}.table", header, grid,
                notes + " †: macro-F1 below the column's best model (paired bootstrap on the same "
                "test images, Holm-corrected per dataset, p < 0.05).")
    _write_grid(out_dir / f"{name}.comparisons",
                ["dataset", "label", "metric", "model A", "model B", "A - B %", "95% CI %", "p",
                 "p (Holm)"],
                [[c["dataset"], c["label"], c["metric"], c["model_a"], c["model_b"],
                  f"{100 * c['difference']:+.1f}", f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]",
                  f"{c['p']:.4f}", f"{c['p_holm']:.4f}"] for c in comparisons],
                "Paired bootstrap over the same resamples of the test images (joined by relative "
                "path) of the 5-fold-model mean; two-sided p (its floor is 2/(resamples + 1)); "
                "Holm per dataset/label.")
    if paper:
        _write_grid(out_dir / f"{name}.paper",
                    ["model", "dataset", "paper table", "paper metric", "our metric", "ours % [95% CI]",
                     "paper % (mean ± sd)", "ours - paper [CI]", "paper inside our CI"],
                    compare_paper(results),
                    "Ours: mean of the 5 fold-models on the test set with its bootstrap CI; the "
                    "paper's values as printed (rounded). Cells without a paper value are omitted.")
    sub = [[r.name, r.dataset, r.label_view, col, value, str(g["n"]), m, f"{100 * g['test'][m]:.1f}",
            f"{100 * g['test_sd'][m]:.1f}", f"{100 * g['test_ci95'][m][0]:.1f}",
            f"{100 * g['test_ci95'][m][1]:.1f}"]
           for r in results for col, by_value in r.subgroups.items()
           for value, g in by_value.items() for m in g["test"]]
    if sub:
        _write_grid(out_dir / f"{name}.subgroups",
                    ["model", "dataset", "label", "column", "value", "n test", "metric", "mean %",
                     "sd %", "CI low %", "CI high %"], sub,
                    "Per subgroup of the test set: the same fold-models and bootstrap resamples, "
                    "restricted to the subgroup's images. Macro metrics count every class, so a "
                    "class absent from a small subgroup pulls its macro-F1 down.")
    (out_dir / f"{name}.json").write_text(json.dumps(
        {"results": [{k: v for k, v in asdict(r).items() if k != "test_samples"} for r in results],
         "comparisons": comparisons, "provenance": provenance(stage="probe")},
        indent=2, default=str))
    return md, csv_path


PAPER_TABLES = Path(__file__).parent / "assets" / "paper_tables.csv"  # copied from the design, not retyped


def compare_paper(results: list[ProbeResult], paper_csv: Path = PAPER_TABLES) -> list[list[str]]:
    """Per model × dataset cell of the paper's Tables 3/4: ours [95% CI], the paper's, and
    ours - paper with its CI. The paper's 'F1' is unspecified, so it is set against our
    macro-F1 and, for 2-class sets, our binary F1 (positive = the disease class)."""
    import csv

    with open(paper_csv, newline="") as f:
        paper = {(r["model"], r["dataset"], r["metric"]): r for r in csv.DictReader(f)}
    rows = []
    for r in results:
        if r.label_view != "class" or r.shuffled_labels:
            continue
        for paper_metric, ours in (("accuracy", "accuracy"), ("f1", "macro_f1"), ("f1", "binary_f1")):
            ref = paper.get((r.model, r.dataset, paper_metric))
            if ref is None or ours not in r.test:
                continue
            value, (lo, hi) = 100 * r.test[ours], (100 * v for v in r.test_ci95[ours])
            p = float(ref["mean_pct"])
            rows.append([r.model, r.dataset, f"Table {ref['table']}", paper_metric, ours,
                         f"{value:.1f} [{lo:.1f}, {hi:.1f}]", f"{p:g} ± {float(ref['sd_pct']):g}",
                         f"{value - p:+.1f} [{lo - p:+.1f}, {hi - p:+.1f}]",
                         "yes" if lo <= p <= hi else "no"])
    return rows


def _write_predictions(path: Path, result_fields: dict, class_names: list[str]) -> Path:
    """Per test image: true class, refit prediction and scores, each fold-model's prediction."""
    import csv

    s = result_fields["test_samples"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["relpath", "true", "refit_pred"] + [f"fold{j}_pred" for j in range(len(s["fold_pred"]))]
                   + [f"refit_score_{c}" for c in class_names])
        for i, rel in enumerate(s["ids"]):
            w.writerow([rel, class_names[s["y"][i]], class_names[s["refit_pred"][i]]]
                       + [class_names[p[i]] for p in s["fold_pred"]]
                       + [f"{v:.6g}" for v in s["refit_scores"][i]])
    return path


def _confusion_figure(fields: dict, class_names: list[str], stem: Path, title: str) -> None:
    """Row-normalized test confusion matrix, summed over the 5 fold-models at the selected t."""
    from .figures import STYLE, plt, save_figure

    s, k = fields["test_samples"], len(class_names)
    cm = sum(np.bincount(s["y"] * k + p, minlength=k * k).reshape(k, k) for p in s["fold_pred"])
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k))
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(class_names, rotation=45, ha="right")
        ax.set_yticklabels(class_names)
        save_figure(fig, stem, {"stage": "probe", "counts": cm.tolist(), "classes": class_names})


PIXELS_FAMILY = "pixels"


def _probe_jobs(caches: list[Cache], cfg: ProbeConfig) -> list[tuple[Cache, ProbeConfig]]:
    """(cache, its config) per table row. A ``pixels`` cache is reduced by PCA inside each fold
    to ``cfg.pca_dim``, or else to each distinct d of the model caches of its dataset (one row
    per d; raw pixels when it is probed alone); other caches are never reduced."""
    def is_pixels(c):
        return c.attrs.get("encoder", {}).get("family") == PIXELS_FAMILY
    jobs = []
    for cache in caches:
        if not is_pixels(cache):
            jobs.append((cache, replace(cfg, pca_dim=0)))
            continue
        dims = [cfg.pca_dim] if cfg.pca_dim else sorted(
            {c.embed_dim for c in caches if c.dataset == cache.dataset and not is_pixels(c)})
        jobs += [(cache, replace(cfg, pca_dim=d)) for d in dims or [0]]
    return jobs


def _split_groups(cache: Cache, split_dir: Path, view: str, grouping: str,
                  seed: int, repeats: int) -> tuple[list[str] | None, str]:
    """The cache's patient ids (metadata "group") for the split, or None. A grouped split
    without them is only possible from files ``vlmprobe datasets split`` already wrote (e.g.
    near-duplicate clusters), one per seed; otherwise the error says how to get them."""
    from .splits import GROUPINGS, SplitSpec, split_path

    if grouping not in GROUPINGS:
        raise VlmprobeError(f"split {grouping!r} is not available; use one of {GROUPINGS}.")
    if "group" in cache.metadata:
        entry = cache.attrs.get("dataset_entry", {})
        return cache.metadata["group"], entry.get("group_key") or entry.get("group_column") or "group"
    missing = [s for s in range(seed, seed + repeats) if grouping == "grouped" and not
               split_path(split_dir, cache.dataset_fingerprint, SplitSpec(view, grouping, s)).is_file()]
    if missing:
        more = f" --repeats {repeats}" if repeats > 1 else ""
        raise VlmprobeError(
            f"{cache.path}: dataset {cache.dataset!r} has no group (patient id) column in the "
            f"cache, so a grouped split cannot be made here, and {split_dir} has no grouped "
            f"split for seed(s) {missing}. Run `vlmprobe datasets split {cache.dataset} --split "
            f"grouped --seed {seed}{more}` (near-duplicate clusters where the dataset ships no "
            f"patient ids), or use --split paper.")
    return None, ""


def probe_caches(caches: list[Cache], label: str | None = None, out: Path | None = None,
                 split_seed: int = 0, cfg: ProbeConfig = ProbeConfig(),
                 log=print) -> list[ProbeResult]:
    """Run the protocol on each cache, sharing split files per dataset (one per outer split,
    seeds split_seed, split_seed+1, ...); save refit probes and per-image test predictions."""
    from .splits import SplitSpec, load_or_create_split

    if cfg.repeats < 1:
        raise VlmprobeError(f"repeats must be >= 1; got {cfg.repeats}.")
    if cfg.pca_dim < 0:
        raise VlmprobeError(f"pca_dim must be >= 0 (0: the d of the compared caches); got "
                            f"{cfg.pca_dim}.")
    _check_same_dataset_files(caches)
    for cache in caches:
        missing = [c for c in cfg.subgroups if c not in cache.metadata]
        if missing:
            raise VlmprobeError(f"{cache.path}: no metadata column(s) {missing} for subgroups; "
                                f"columns: {', '.join(sorted(cache.metadata)) or 'none'}.")
    results = []
    for cache, job in _probe_jobs(caches, cfg):
        y, names, view = cache.label_view(label)
        positive = cache.attrs.get("dataset_entry", {}).get("positive_class") if view == "class" else None
        split_dir = Path(cache.path).parent / "splits"  # beside the caches: shared by all models
        patients, group_source = _split_groups(cache, split_dir, view, job.split, split_seed,
                                              job.repeats)
        runs = []
        for r in range(job.repeats):
            split = load_or_create_split(split_dir, cache.dataset_fingerprint, cache.relpaths, y,
                                         names, SplitSpec(label_view=view, grouping=job.split,
                                                          seed=split_seed + r),
                                         source=str(cache.path), groups=patients,
                                         group_source=group_source)
            test, fold = split.align(cache.relpaths, str(cache.path))
            rows = np.flatnonzero(test)
            groups = {c: [cache.metadata[c][i] for i in rows] for c in job.subgroups}
            runs.append((split, *fit_probe(cache.embeddings, y, test, fold, names, job, positive,
                                           [cache.relpaths[i] for i in rows], groups)))
        split, fields, probe = runs[0]
        path = probe_path(cache, view, out)
        path = path.with_name(path.name + ("" if job.probe == "svm" else f".{job.probe}")
                              + (f".{job.few_shot}-shot" if job.few_shot else "")
                              + (f".pca{job.pca_dim}" if job.pca_dim else "")
                              + ("" if job.split == "paper" else f".{job.split}")
                              + (".shuffled-labels" if job.shuffle_labels else ""))
        result = ProbeResult(model=cache.model, dataset=cache.dataset + cache.view_tag,
                             label_view=view,
                             baseline=cache.baseline, pca_dim=job.pca_dim, split=job.split,
                             intensity_pipeline=cache.attrs.get("intensity_pipeline", ""),
                             **fields)
        if probe is not None:
            probe.info.update({"model": cache.model, "dataset": cache.dataset, "label_view": view,
                               "intensity_pipeline": result.intensity_pipeline,
                               "cache_key": cache.cache_key, "split_file": str(split.path),
                               "protocol": asdict(job), "provenance": provenance(stage="probe")})
            result.probe_file = str(probe.save(path))
        result.predictions_file = str(_write_predictions(
            path.with_name(path.name + ".test_predictions.csv"), fields, names))
        _confusion_figure(fields, names, path.with_name(path.name + ".confusion"),
                          f"{result.name} / {cache.dataset} [{view}]")
        result.repeats = [{"split_seed": split_seed + r, "split_file": str(sp.path),
                           # patients crossing train/test (0 for grouped; the leak for paper)
                           "groups": json.loads(sp.path.with_suffix(".json").read_text()).get(
                               "groups"),
                           "selected_t": f["selected_t"], "test": f["test"]}
                          for r, (sp, f, _) in enumerate(runs)]
        log(f"{result.name} / {cache.dataset} [{view}]: {result.selected}, test macro-F1 "
            f"{result.cell('macro_f1')}; refit ({'k' if job.probe == 'knn' else 'C'}="
            f"{result.refit_C:.4g}) test macro-F1 {100 * result.refit_test['macro_f1']:.1f}"
            + (f" -> {result.probe_file}" if result.probe_file else ""))
        results.append(result)
    return results
