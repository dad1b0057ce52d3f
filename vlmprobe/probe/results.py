"""One probe result (a table row): every metric with its sd and CI, the selected t, the fits, and
the per-image test scores that paired comparisons resample."""
from __future__ import annotations

from dataclasses import dataclass, field


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
    # With several outer splits (``repeats``) test, test_sd and test_ci95 are over the splits:
    # the mean, the sd (ddof=0) and the CI of the mean from each resample's mean over splits.
    test: dict[str, float]             # metric -> mean over the 5 fold-models
    test_sd: dict[str, float]          # ddof=0
    test_ci95: dict[str, tuple[float, float]]  # bootstrap (of images or groups) of that mean
    per_class: dict[str, list[float]]  # f1/sensitivity/specificity/auroc, fold-model mean
    all_converged: bool                # every fit converged (or stopped at the numerical floor)
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
    split: str = "paper"   # the grouping of the train/test split (vlmprobe.data.splits.GROUPINGS)
    pca_dim: int = 0   # the pixels baseline: PCA to this d inside each fold
    fits: dict = field(default_factory=dict)  # settings once + per (fold, t) C, n_iter, converged
    intensity_pipeline: str = ""  # how the cache's pixels were decoded (8-bit, float, DICOM window)
    n_at_floor: int = 0    # fits optimal to machine precision whose gradient test was out of reach
    solver: str = ""       # the SVM's: fast (exact optimum) or sklearn (LinearSVC's defaults)
    tol: float | None = None       # the tolerance and iteration cap every fit used
    max_iter: int | None = None
    bootstrap: dict = field(default_factory=dict)  # unit (image | group), n_units, n_resamples
    dropped_classes: list[str] = field(default_factory=list)  # classes with no image in the cache
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
        lo, hi = self.test_ci95[m]
        bounds = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if ci else ""
        if len(self.repeats) > 1:
            return (f"{100 * self.test[m]:.1f} ± {100 * self.test_sd[m]:.1f}{bounds} "
                    f"({len(self.repeats)} splits)")
        return f"{100 * self.test[m]:.1f} ± {100 * self.test_sd[m]:.1f}{bounds}"

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
                "converged": self.converged_cell}

    @property
    def converged_cell(self) -> str:
        if not self.all_converged:
            return f"no ({self.n_unconverged} fits)"
        return f"yes ({self.n_at_floor} at the numerical floor)" if self.n_at_floor else "yes"

    @property
    def key(self) -> tuple[str, str, str]:
        """What a table row is of: (model as named in tables, dataset, label view). A later run
        with the same key replaces the row."""
        return self.name, self.dataset, self.label_view

    @property
    def split_files(self) -> list[str]:
        """The split file of each outer split (one unless ``repeats``)."""
        return [r["split_file"] for r in self.repeats]

    def to_record(self) -> dict:
        """One flat row of numbers (fractions, not percent) for a data frame."""
        record = {"model": self.model, "name": self.name, "dataset": self.dataset,
                  "label": self.label_view, "split": self.split, "probe": self.probe,
                  "baseline": self.baseline, "n_train": self.n_train, "n_test": self.n_test,
                  "d": self.embed_dim, "selected_t": self.selected_t,
                  "saturated": self.saturated}
        for m, value in self.test.items():
            lo, hi = self.test_ci95[m]
            record.update({m: value, f"{m}_sd": self.test_sd[m], f"{m}_ci_low": lo,
                           f"{m}_ci_high": hi})
        record.update(refit_macro_f1=self.refit_test["macro_f1"], refit_C=self.refit_C,
                      converged=self.all_converged, n_splits=max(1, len(self.repeats)))
        return record

    @classmethod
    def from_dict(cls, fields_: dict, test_samples: dict | None = None) -> "ProbeResult":
        """A result read back from a table's JSON (and its per-image samples)."""
        return cls(**{**fields_, "test_samples": test_samples or {}})
