"""Linear probing by the paper's protocol (protocol.md §2), with LinearSVC's objective.

For each of the 5 folds of the training part: z-score on the 4 fitting folds, LinearSVC with
C = t·d/N (N = the fitting folds' size) for every t, macro-F1 on the held-out fold. The t with the
best mean validation macro-F1 wins (ties: smallest t); the 5 fold-models at that t are scored on
the test set (mean ± sd, ddof=0). A scaler + SVM refit on the whole training part with that t is
saved (npz + JSON, no pickle): it is the black box RISE explains. The SVMs are fitted by
``vlmprobe.svm`` (solver "fast": same objective, all t of a fold on one warm-started path) or by
scikit-learn's LinearSVC itself (solver "sklearn", the reference).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from .cache import Cache, describe_fingerprint_difference
from .paths import stage_dir
from .provenance import provenance
from .validation import VlmprobeError

T_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def c_value(t: float, embed_dim: int, n_fit: int) -> float:
    """The paper's C = t · d / N, N = number of samples the SVM is fitted on."""
    return float(t) * embed_dim / n_fit


SOLVERS = ("fast", "sklearn")


@dataclass(frozen=True)
class ProbeConfig:
    t_grid: tuple[float, ...] = T_GRID
    # "fast" (vlmprobe.svm, its own tol/max_iter) passes the equivalence tests but is not yet
    # faster at N≈5k, d≈1k (benchmarks/RESULTS.md), so the reference stays the default.
    solver: str = "sklearn"  # LinearSVC itself, with max_iter and tol below
    max_iter: int = 1000   # LinearSVC defaults, recorded so unconverged fits are visible
    tol: float = 1e-4
    n_bootstrap: int = 1000
    seed: int = 0


def _fit_svm(X, y, Cs, cfg: ProbeConfig) -> list[tuple[object, bool]]:
    """(fitted SVM, converged) per C: the one place the solver is chosen."""
    if cfg.solver == "fast":
        from .svm import fit_path

        return [(svm, svm.converged_) for svm in fit_path(X, y, Cs)]
    if cfg.solver != "sklearn":
        raise VlmprobeError(f"Unknown solver {cfg.solver!r}; choose one of {', '.join(SOLVERS)}.")
    fits = []
    for C in Cs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            svm = LinearSVC(C=C, max_iter=cfg.max_iter, tol=cfg.tol, random_state=cfg.seed).fit(X, y)
        fits.append((svm, not any(issubclass(w.category, ConvergenceWarning) for w in caught)))
    return fits


def _svm_info(svm, converged: bool) -> dict:
    """What fitted the probe, with every setting and whether it converged."""
    return {"class": f"{type(svm).__module__}.{type(svm).__name__}", **svm.get_params(),
            "sklearn_version": sklearn.__version__, "n_iter": int(np.max(svm.n_iter_)),
            "converged": bool(converged)}


def _scores(y_true, y_pred, n_classes: int, positive: int | None) -> dict[str, float]:
    labels = np.arange(n_classes)
    out = {"accuracy": accuracy_score(y_true, y_pred),
           "macro_f1": f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0),
           "weighted_f1": f1_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0)}
    if positive is not None:
        out["binary_f1"] = f1_score(y_true, y_pred, pos_label=positive, average="binary",
                                    zero_division=0)
    return {k: float(v) for k, v in out.items()}


def bootstrap_ci(y_true, y_pred, n_classes, n_boot: int, seed: int, level: float = 0.95):
    """Percentile bootstrap CI of test macro-F1 (resampling test images)."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    stats = [f1_score(y_true[b], y_pred[b], average="macro", labels=np.arange(n_classes),
                      zero_division=0) for b in rng.integers(0, n, size=(n_boot, n))]
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


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
    return stage_dir(cache.path, cache.dataset, "probe", out_dir) / f"{cache.model}{suffix}"


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
    t_grid: list[float]
    val_macro_f1: list[float]          # mean over folds, per t
    val_macro_f1_sd: list[float]
    selected_t: float
    saturated: bool
    test: dict[str, float]             # metric -> mean over the 5 fold-models
    test_sd: dict[str, float]          # ddof=0
    all_converged: bool
    n_unconverged: int
    refit_C: float
    refit_test: dict[str, float]
    refit_test_macro_f1_ci95: tuple[float, float]
    positive_class: str | None
    probe_file: str = ""

    def row(self) -> dict:
        def pm(m):
            return f"{100 * self.test[m]:.1f} ± {100 * self.test_sd[m]:.1f}" if m in self.test else ""
        lo, hi = self.refit_test_macro_f1_ci95
        return {"model": self.model + (" (baseline)" if self.baseline else ""),
                "dataset": self.dataset, "label": self.label_view, "N_train": self.n_train,
                "N_test": self.n_test, "d": self.embed_dim,
                "t": "saturated" if self.saturated else f"{self.selected_t:g}",
                "accuracy %": pm("accuracy"), "macro-F1 %": pm("macro_f1"),
                "weighted-F1 %": pm("weighted_f1"),
                "binary-F1 %": pm("binary_f1") if self.positive_class else "n/a",
                "refit macro-F1 % [95% CI]": f"{100 * self.refit_test['macro_f1']:.1f} "
                                             f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                "converged": "yes" if self.all_converged else f"no ({self.n_unconverged} fits)"}


def fit_probe(X: np.ndarray, y: np.ndarray, test: np.ndarray, fold: np.ndarray,
              class_names: list[str], cfg: ProbeConfig = ProbeConfig(),
              positive_class: str | None = None) -> tuple[dict, LinearProbe]:
    """The protocol on arrays; returns the result fields and the refit probe."""
    n_classes, d = len(class_names), X.shape[1]
    positive = class_names.index(positive_class) if positive_class in class_names else None
    if n_classes != 2:
        positive = None
    folds = sorted(set(fold[~test].tolist()))
    val_f1 = np.zeros((len(cfg.t_grid), len(folds)))
    val_preds = [[None] * len(folds) for _ in cfg.t_grid]
    test_preds = [[None] * len(folds) for _ in cfg.t_grid]
    unconverged = 0
    for j, k in enumerate(folds):
        fit, val = (~test) & (fold != k), fold == k
        scaler = StandardScaler().fit(X[fit])
        Xf, Xv, Xt = scaler.transform(X[fit]), scaler.transform(X[val]), scaler.transform(X[test])
        fits = _fit_svm(Xf, y[fit], [c_value(t, d, int(fit.sum())) for t in cfg.t_grid], cfg)
        for i, (svm, ok) in enumerate(fits):
            unconverged += not ok
            val_preds[i][j] = svm.predict(Xv)
            val_f1[i, j] = f1_score(y[val], val_preds[i][j], average="macro",
                                    labels=np.arange(n_classes), zero_division=0)
            test_preds[i][j] = svm.predict(Xt)
    mean_val = val_f1.mean(1)
    best = int(np.flatnonzero(mean_val >= mean_val.max() - 1e-12)[0])  # ties -> smallest t
    saturated = all(np.array_equal(val_preds[i][j], val_preds[0][j])
                    for i in range(len(cfg.t_grid)) for j in range(len(folds)))
    per_fold = [_scores(y[test], test_preds[best][j], n_classes, positive) for j in range(len(folds))]
    metrics = per_fold[0].keys()
    # Refit on the whole training part with the selected t: the probe RISE explains.
    train = ~test
    scaler = StandardScaler().fit(X[train])
    C = c_value(cfg.t_grid[best], d, int(train.sum()))
    [(svm, ok)] = _fit_svm(scaler.transform(X[train]), y[train], [C], cfg)
    unconverged += not ok
    refit_pred = svm.predict(scaler.transform(X[test]))
    fields = dict(
        class_names=class_names, n_train=int(train.sum()), n_test=int(test.sum()), embed_dim=d,
        t_grid=list(cfg.t_grid), val_macro_f1=mean_val.tolist(),
        val_macro_f1_sd=val_f1.std(1).tolist(), selected_t=cfg.t_grid[best], saturated=saturated,
        test={m: float(np.mean([s[m] for s in per_fold])) for m in metrics},
        test_sd={m: float(np.std([s[m] for s in per_fold])) for m in metrics},
        all_converged=unconverged == 0, n_unconverged=unconverged, refit_C=C,
        refit_test=_scores(y[test], refit_pred, n_classes, positive),
        refit_test_macro_f1_ci95=bootstrap_ci(y[test], refit_pred, n_classes, cfg.n_bootstrap,
                                              cfg.seed),
        positive_class=positive_class if positive is not None else None,
    )
    probe = LinearProbe(scaler.mean_, scaler.scale_, svm.coef_, svm.intercept_, class_names,
                        {"C": C, "t": cfg.t_grid[best], "n_fit": int(train.sum()),
                         "svm": {"solver": cfg.solver, **_svm_info(svm, ok)}})
    return fields, probe


def _check_same_dataset_files(caches: list[Cache]) -> None:
    """Caches of one dataset must come from identical files, or the shared split lies."""
    first: dict[str, Cache] = {}
    for c in caches:
        ref = first.setdefault(c.dataset, c)
        if c.dataset_fingerprint != ref.dataset_fingerprint:
            raise VlmprobeError(
                f"Caches of dataset {c.dataset!r} were extracted from different files: {ref.path} "
                f"vs {c.path}: {describe_fingerprint_difference(ref, c)}. Re-extract one of them "
                "from the same dataset copy (vlmprobe extract ... --force).")


def write_table(results: list[ProbeResult], out_dir: Path, name: str = "probe_results") -> tuple[Path, Path]:
    """Markdown + CSV table, one row per model × dataset × label view, with a provenance sidecar."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    cols = list(rows[0])
    md = out_dir / f"{name}.md"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    notes = ("\nTest metrics: mean ± sd (ddof=0) of the 5 fold-models at the selected t on the "
             "held-out 20% test set. t: C = t·d/N chosen by mean validation macro-F1 (ties → "
             "smallest t); 'saturated' = every t gave identical validation predictions. refit: "
             "scaler + SVM refit on the whole training part (the probe RISE explains), 95% "
             "percentile bootstrap CI over test images.\n")
    md.write_text("\n".join(lines) + "\n" + notes)
    csv_path = out_dir / f"{name}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (out_dir / f"{name}.json").write_text(json.dumps(
        {"results": [asdict(r) for r in results], "provenance": provenance(stage="probe")},
        indent=2, default=str))
    return md, csv_path


def probe_caches(caches: list[Cache], label: str | None = None, out: Path | None = None,
                 split_seed: int = 0, cfg: ProbeConfig = ProbeConfig(),
                 log=print) -> list[ProbeResult]:
    """Run the protocol on each cache, sharing one split file per dataset; save refit probes."""
    from .splits import SplitSpec, load_or_create_split

    _check_same_dataset_files(caches)
    results = []
    for cache in caches:
        y, names, view = cache.label_view(label)
        spec = SplitSpec(label_view=view, seed=split_seed)
        split_dir = Path(cache.path).parent / "splits"  # beside the caches: shared by all models
        split = load_or_create_split(split_dir, cache.dataset_fingerprint, cache.relpaths, y, names,
                                     spec, source=str(cache.path))
        test, fold = split.align(cache.relpaths, str(cache.path))
        positive = cache.attrs.get("dataset_entry", {}).get("positive_class") if view == "class" else None
        fields, probe = fit_probe(cache.embeddings, y, test, fold, names, cfg, positive)
        path = probe_path(cache, view, out)
        probe.info.update({"model": cache.model, "dataset": cache.dataset, "label_view": view,
                           "cache_key": cache.cache_key, "split_file": str(split.path),
                           "protocol": asdict(cfg), "provenance": provenance(stage="probe")})
        result = ProbeResult(model=cache.model, dataset=cache.dataset, label_view=view,
                             baseline=cache.baseline, probe_file=str(probe.save(path)), **fields)
        t_text = "saturated grid" if result.saturated else f"t={result.selected_t:g}"
        log(f"{cache.model} / {cache.dataset} [{view}]: {t_text}, test macro-F1 "
            f"{100 * result.test['macro_f1']:.1f} ± {100 * result.test_sd['macro_f1']:.1f}; refit probe "
            f"(C={result.refit_C:.4g}) test macro-F1 {100 * result.refit_test['macro_f1']:.1f} "
            f"-> {result.probe_file}")
        results.append(result)
    return results
