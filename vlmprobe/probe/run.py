"""The probe stage over caches: shared split files per dataset, one result per cache (and per
baseline d), saved refit probes, per-image test predictions and confusion figures."""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..cache import Cache, describe_fingerprint_difference, stage_inputs
from ..cache.chunks import written_beside
from ..data.splits import GROUPINGS, SplitSpec, load_or_create_split, split_path
from ..provenance import provenance
from ..validation import VlmprobeError, with_options
from .figures import confusion_figure
from .linear import probe_path
from . import stats
from .protocol import ProbeConfig, fit_probe
from .results import ProbeResult
from .tables import merge_results, read_table, table_name, write_table

log = logging.getLogger(__name__)


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


def _write_predictions(path: Path, result_fields: dict, class_names: list[str]) -> Path:
    """Per test image: true class, refit prediction and scores, each fold-model's prediction."""
    s = result_fields["test_samples"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_beside(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["relpath", "true", "refit_pred"] + [f"fold{j}_pred" for j in range(len(s["fold_pred"]))]
                   + [f"refit_score_{c}" for c in class_names])
        for i, rel in enumerate(s["ids"]):
            w.writerow([rel, class_names[s["y"][i]], class_names[s["refit_pred"][i]]]
                       + [class_names[p[i]] for p in s["fold_pred"]]
                       + [f"{v:.6g}" for v in s["refit_scores"][i]])
    return path


PIXELS_FAMILY = "pixels"


def _probe_jobs(caches: list[Cache], cfg: ProbeConfig) -> list[tuple[Cache, ProbeConfig]]:
    """(cache, its config) per table row. A ``pixels`` cache is reduced by PCA inside each fold
    to ``cfg.pca_dim``, or else to each distinct d of the model caches of its dataset (one row
    per d; raw pixels when it is probed alone); other caches are never reduced."""
    def is_pixels(c):
        return c.family == PIXELS_FAMILY
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
    if grouping not in GROUPINGS:
        raise VlmprobeError(f"split {grouping!r} is not available; use one of {GROUPINGS}.")
    if "group" in cache.metadata:
        return cache.metadata["group"], cache.group_source
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


def _bootstrap_groups(cache: Cache, unit: str) -> list[str] | None:
    """Each image's group (patient or lesion id, metadata "group") for a bootstrap of groups, or
    None to resample images: ``unit`` "image", or "auto" on a cache without groups. An image
    without a group id is a group of its own; how many there are is said."""
    groups = cache.metadata.get("group")
    if unit == "group" and groups is None:
        raise VlmprobeError(
            f"{cache.path}: --bootstrap-unit group resamples patients or lesions, but dataset "
            f"{cache.dataset!r} has no group column in the cache (its registry entry names no "
            "group_column or group_pattern). Use --bootstrap-unit image (or auto).")
    if unit == "image" or groups is None:
        return None
    missing = sum(1 for g in groups if not g)
    if missing:
        log.warning(f"{cache.path}: {missing} of {len(groups)} images have no group id; each is "
                    "a group of its own in the bootstrap.")
    return groups


def _over_splits(first: dict, runs: list[dict]) -> dict:
    """The first split's fields with test, test_sd and test_ci95 over all outer splits: the mean
    over splits, the sd over splits (ddof=0), and the CI of that mean from each resample's mean
    over splits (the B-th resample of every split averaged: the bootstrap of the split mean with
    the splits fixed). Comparisons and the paper check then use every split, as the cells do."""
    names = list(first["test"])
    boot = {m: np.mean([f["test_samples"]["boot"][m] for f in runs], axis=0) for m in names}
    pairing = [tuple(sorted(f["test_samples"]["ids"])) for f in runs]
    return {**first,
            "test": {m: float(np.mean([f["test"][m] for f in runs])) for m in names},
            "test_sd": {m: float(np.std([f["test"][m] for f in runs])) for m in names},
            "test_ci95": {m: stats.percentile_ci(boot[m]) for m in names},
            "test_samples": {**first["test_samples"], "boot": boot, "pairing": pairing}}


@dataclass
class ProbeRun(Sequence):
    """The probe stage's results, one :class:`ProbeResult` per table row (a sequence of them),
    and what is needed to write their tables: :meth:`save` (what the CLI does),
    :meth:`to_frame` (for a notebook)."""

    results: list[ProbeResult]
    config: ProbeConfig
    label: str | None = None
    table_dir: Path | None = None  # where save() writes by default: the output or cache folder

    def __getitem__(self, i):
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)

    @property
    def table_name(self) -> str:
        return table_name(self.config, self.label)

    def to_frame(self):
        """One row of numbers per result (metrics as fractions, with sd and CI bounds)."""
        import pandas as pd

        return pd.DataFrame([r.to_record() for r in self.results])

    def save(self, directory: str | Path | None = None, compare_paper: bool = False) -> list[Path]:
        """Write the tables (:func:`write_table`) under ``directory`` (default ``table_dir``),
        named after every setting that changes their numbers (:func:`table_name`). Rows already
        in that table for other models, datasets or taps are kept; rows with the same key are
        replaced. Returns the Markdown and CSV paths of the main table."""
        directory = Path(directory) if directory is not None else self.table_dir
        if directory is None:
            raise VlmprobeError("ProbeRun.save needs a directory: these caches have no path to "
                                "put tables beside. Pass save(directory=...).")
        existing = directory / f"{self.table_name}.json"
        old = read_table(existing) if existing.is_file() else []
        return list(write_table(merge_results(old, self.results), directory, self.table_name,
                                paper=compare_paper))


def _probe_cache(cache: Cache, job: ProbeConfig, label: str | None, out: Path | None,
                 split_seed: int) -> ProbeResult:
    """The protocol on one cache: its split files (one per outer split, shared with every model
    of the dataset), the fits, the refit probe, per-image test predictions and the confusion
    figure, written beside the cache (or under ``out``)."""
    y, names, view = cache.label_view(label)
    dropped = cache.empty_classes if view == "class" else []
    if dropped:
        log.warning(f"{cache.path}: class(es) {dropped} have no image in this cache and are "
                    "left out of the class view (recorded as dropped_classes); the other "
                    f"{len(names)} are probed.")
    positive = cache.positive_class if view == "class" else None
    split_dir = Path(cache.path).parent / "splits"  # beside the caches: shared by all models
    patients, group_source = _split_groups(cache, split_dir, view, job.split, split_seed,
                                          job.repeats)
    clusters = _bootstrap_groups(cache, job.bootstrap_unit)
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
        runs.append((split, *fit_probe(
            cache.embeddings, y, test, fold, names, job, positive,
            [cache.relpaths[i] for i in rows], groups,
            None if clusters is None else [clusters[i] for i in rows])))
    split, fields, probe = runs[0]
    if len(runs) > 1:
        fields = _over_splits(fields, [f for _, f, _ in runs])
    path = probe_path(cache, view, out)
    path = path.with_name(path.name + ("" if job.probe == "svm" else f".{job.probe}")
                          + (f".{job.few_shot}-shot" if job.few_shot else "")
                          + (f".pca{job.pca_dim}" if job.pca_dim else "")
                          + ("" if job.split == "paper" else f".{job.split}")
                          + (".shuffled-labels" if job.shuffle_labels else ""))
    result = ProbeResult(model=cache.model, dataset=cache.dataset + cache.view_tag,
                         label_view=view,
                         baseline=cache.baseline, pca_dim=job.pca_dim, split=job.split,
                         intensity_pipeline=cache.intensity_pipeline,
                         dropped_classes=dropped, **fields)
    if probe is not None:
        probe.info.update({"model": cache.model, "dataset": cache.dataset, "label_view": view,
                           "intensity_pipeline": result.intensity_pipeline,
                           "cache_key": cache.cache_key, "split_file": str(split.path),
                           "protocol": asdict(job), "provenance": provenance(stage="probe")})
        result.probe_file = str(probe.save(path))
    result.predictions_file = str(_write_predictions(
        path.with_name(path.name + ".test_predictions.csv"), fields, names))
    confusion_figure(fields, names, path.with_name(path.name + ".confusion"),
                      f"{result.name} / {cache.dataset} [{view}]")
    result.repeats = [{"split_seed": split_seed + r, "split_file": str(sp.path),
                       # patients crossing train/test (0 for grouped; the leak for paper)
                       "groups": json.loads(sp.path.with_suffix(".json").read_text()).get(
                           "groups"),
                       "selected_t": f["selected_t"], "test": f["test"]}
                      for r, (sp, f, _) in enumerate(runs)]
    boot = result.bootstrap
    log.info(f"{result.name} / {cache.dataset} [{view}]: {result.selected}, test macro-F1 "
             f"{result.cell('macro_f1')} (bootstrap over {boot['n_units']} test "
             f"{boot['unit']}s{', solver ' + job.solver if job.probe == 'svm' else ''}); refit "
             f"({'k' if job.probe == 'knn' else 'C'}={result.refit_C:.4g}) test macro-F1 "
             f"{100 * result.refit_test['macro_f1']:.1f}"
             + (f" -> {result.probe_file}" if result.probe_file else ""))
    return result


def run_probe(caches=None, config: ProbeConfig | None = None, *, label: str | None = None,
              out: str | Path | None = None, tap: str | None = None, **options) -> ProbeRun:
    """The paper's linear probe on each cache (docs/protocol.md, the probe).

    ``caches``: :class:`~vlmprobe.cache.Cache` objects, cache files or folders (default: every
    cache under the cache directory ``out``), see :func:`vlmprobe.cache.stage_inputs`.
    ``config`` (:class:`ProbeConfig`) holds the protocol's settings; keyword ``options`` change
    single ones (``run_probe(caches, solver="sklearn")``). ``label``: probe a metadata column
    instead of the class. Split files are shared per dataset (one per outer split, seeds
    ``config.seed``, +1, ...); the refit probes, per-image test predictions and confusion figures
    are written beside each cache (or under ``out``), the tables by :meth:`ProbeRun.save`.
    """
    cfg = with_options(config or ProbeConfig(), options)
    caches, outputs = stage_inputs(caches, out, tap)
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
    results = [_probe_cache(cache, job.resolved(), label, outputs, cfg.seed)
               for cache, job in _probe_jobs(caches, cfg)]
    first = caches[0].path
    return ProbeRun(results, cfg, label,
                    outputs if outputs is not None else Path(first).parent.parent if first else None)
