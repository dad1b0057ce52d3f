"""The offline demo: a small study (:mod:`vlmprobe.study`) on two phantom datasets with known
ground truth, ending in a summary of what was found and where every table and figure is.

phantoms (BUSI with a burnt-in word correlated with the class; brain MRI with an acquisition-site
mark) -> ``study.yaml`` -> the study: extract (pretrained efficientnet_lite0 and its random-weight
twin) -> probe (the class, and the nuisance as a label) -> UMAP -> RISE -> the study's report
(``report/report.html``, :mod:`vlmprobe.report`) -> ``SUMMARY.md``, read from the study's run
record. Running it again continues (or skips) what is done.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .cache.chunks import write_atomic
from .data.phantoms import make_phantom
from .study import read_record, run_study
from .validation import VlmprobeError

MODEL = "efficientnet_lite0"
BASELINE = "efficientnet_lite0_random"
BREASTUS_N, SITE_N = 600, 120
#: study name (= registry key) -> (phantom, nuisance column, what the nuisance is)
DATASETS = {
    "breastus_phantom": ("breastus", "word", "a burnt-in word (BREAST/AXILLA) correlated with "
                                             "the class; lesion masks"),
    "brainmr": ("brainmr", "site", "an acquisition site (site B: a bright stripe; both: a burnt-in "
                                   "SITE A/B) correlated with the class"),
}

log = logging.getLogger(__name__)


def demo_study(models: tuple[str, ...], n_masks: int, n_images: int) -> str:
    """The demo's study file: every stage and the report, each dataset probed for its class and
    its nuisance, which it declares (``nuisance_columns``) for the report's background-bias audit
    (RISE explains one image fewer on the site phantom, which has no lesion masks to score)."""
    datasets = "".join(
        f"  {name}:\n    root: data/{name}\n    options: {{nuisance_columns: [{col}]}}\n"
        f"    stages:\n"
        f"      probe: {{label: [class, {col}]}}\n      umap: {{color_by: [{col}]}}\n"
        f"      rise: {{labels: [class, {col}], choice: {{k: {max(1, n_images - i)}}}}}\n"
        for i, (name, (_, col, _)) in enumerate(DATASETS.items()))
    return (f"# Written by `vlmprobe demo`: the demo as a study (see README, Studies).\n"
            f"out: .\nmodels: [{', '.join(models)}]\ndatasets:\n{datasets}"
            f"stages:\n  extract: {{}}\n  probe: {{}}\n"
            f"  umap: {{n_neighbors: [15], min_dist: [0.1]}}\n  rise: {{n_masks: {n_masks}}}\n"
            f"  report: {{}}\n"
            f"launcher: {{name: local, jobs: 1}}\n")


def run_demo(out: Path, n: int = BREASTUS_N, seed: int = 0, n_masks: int = 1024,
             n_images: int = 3, site_n: int = SITE_N,
             models: tuple[str, str] = (MODEL, BASELINE),
             progress: bool = True) -> tuple[Path, Path]:
    """The demo study under ``out``; returns the paths of ``SUMMARY.md`` and of the study's
    report (HTML). ``models``: the model and its null baseline."""
    out = Path(out).resolve()
    log.info(f"1/3 phantoms (seed {seed}) under {out / 'data'}")
    for name, (phantom, _, _) in DATASETS.items():
        root = out / "data" / name
        if (root / "phantom.json").is_file():
            log.info(f"  {name}: already there, reused")
        else:
            make_phantom(phantom, root, n=n if phantom == "breastus" else site_n, seed=seed,
                         progress=progress)
    study = out / "study.yaml"
    write_atomic(study, demo_study(models, n_masks, n_images))
    log.info(f"2/3 the study {study}: {' and '.join(models)} x {', '.join(DATASETS)}: extract, "
             "probe (class and nuisance), UMAP, RISE, then its report (tables, maps, saliency, "
             "bias audit, CKA, provenance)")
    run = run_study(study, progress=progress)
    if not run.ok:
        failed = [f"{s.job.id} ({s.reason.splitlines()[0] if s.reason else s.status}; log "
                  f"{s.log})" for s in run.states if s.status not in ("done", "skipped")]
        raise VlmprobeError(f"The demo study did not finish: {'; '.join(failed)}. Run `vlmprobe "
                            "demo` again to continue where it stopped.")
    record = read_record(run.record)
    if run.report is None:
        raise VlmprobeError(f"The demo study's report was not written: "
                            f"{record['runs'][-1]['report']['reason']}")
    log.info("3/3 summary, from the run record")
    path = out / "SUMMARY.md"
    write_atomic(path, summary(record, models))
    return path, run.report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    """A RISE number (null in the record where it is undefined, e.g. no lesion mask)."""
    return "n/a" if x is None else f"{x:.2f}"


def summary(record: dict, models: tuple[str, str]) -> str:
    """What the demo found and where everything is, from the study's run record."""
    jobs, (real, null) = record["jobs"], models
    lines = ["# vlmprobe demo summary", "",
             f"A study of {real} and its random-weight twin {null} (a null baseline) on two "
             "phantom datasets with known ground truth. Test metrics: the paper's protocol "
             "(5 fold-models at the selected C, 20% held-out test set), mean ± sd.", ""]
    where = []
    for name, (_, col, nuisance) in DATASETS.items():
        extract = jobs[f"extract/{real}/{name}"]["outputs"]
        probe = jobs[f"probe/{name}"]["outputs"]
        rows = {(r["model"], r["label"]): r for r in probe["results"]}
        a, b = rows[(real, "class")], rows[(null, "class")]
        margin = a["macro_f1"] - b["macro_f1"]
        lines += [f"## {name}: {extract['n_images']} images; nuisance: {nuisance}", "",
                  f"- **Pretrained vs null baseline.** {real} reaches test macro-F1 "
                  f"{_pct(a['macro_f1'])} ± {_pct(a['macro_f1_sd'])}, {null} "
                  f"{_pct(b['macro_f1'])} ± {_pct(b['macro_f1_sd'])}: a margin of "
                  f"{100 * margin:+.1f} points. " + (
                      "Pretraining adds discriminative power here." if margin >= 0.10 else
                      "Pretraining adds little here: random features separate these classes "
                      "almost as well (a low-level class signal); be careful crediting it."),
                  f"- **Bias exposed.** The nuisance ({col}) is predictable from the features: "
                  f"macro-F1 {_pct(rows[(real, col)]['macro_f1'])} ({real}), "
                  f"{_pct(rows[(null, col)]['macro_f1'])} ({null}). A classifier on these "
                  "features can use it as a shortcut."]
        for png in jobs[f"umap/{name}"]["outputs"]["figures"]:
            kind = "the models side by side" if Path(png).name.startswith("compare") else "map"
            where.append(f"- UMAP of {name}, {kind}: `{png}` (+ .svg" + (
                "" if kind != "map" else ", interactive .html and coordinates .npz beside it")
                + ")")
        for m in jobs.get(f"rise/{real}/{name}", {}).get("outputs", {}).get("maps", []):
            cls, nui = m["by_probe"]["class"], m["by_probe"][col]
            lesion = ("" if cls["mean_lesion_enrichment"] is None else
                      f"lesion {_num(cls['mean_lesion_enrichment'])}, ")
            reliable = (cls["mean_split_half_r"] or 0) >= 0.5
            lines.append(
                f"- **Where the probes look (RISE, {len(m['images'])} test image(s) of "
                f"{m['model']}, class and {col} probes scored on the same masked images).** "
                "Share of positive saliency ÷ share of image area (1 = no preference): class "
                f"probe: {lesion}burnt-in text box {_num(cls['mean_text_enrichment'])}; {col} "
                f"probe: text box {_num(nui['mean_text_enrichment'])}. Deletion / insertion AUC "
                f"of the class maps {_num(cls['mean_deletion_auc'])} / "
                f"{_num(cls['mean_insertion_auc'])} (class probability; lower / higher is "
                "better). Sanity checks: split-half reliability r = "
                f"{_num(cls['mean_split_half_r'])}" + ("" if reliable else
                " (low: at this number of masks the maps are noisy; use `vlmprobe rise "
                "--n-masks 4096`, the paper's N, before reading them)") + "; rank correlation "
                f"with the map of a random-weight probe {_num(cls['mean_random_probe_rank_r'])} "
                "(near 0 is what a map of what the probe learned should give; near ±1, the map "
                "would look the same for any probe).")
            where.append(f"- RISE of {m['model']} on {name}: overview `{m['figure']}` (+ .svg), "
                         f"one figure per image in `{m['panels']}`, per-image numbers "
                         f"`{m['table']}`, maps `{m['maps_file']}`")
        lines.append("")
    tables = {md: csv for name in DATASETS
              for md, csv in jobs[f"probe/{name}"]["outputs"]["tables"].values()}
    lines += ["## Where everything is", "",
              f"- the study: `{record['study_file']}`; its run record (options, versions, "
              f"durations per job): `{Path(record['out']) / 'run_record.json'}`; one log per job "
              f"in `{Path(record['out']) / 'logs'}`"]
    report = (record["runs"][-1].get("report") or {}).get("html")
    if report:
        lines.append(f"- the report (every table, map and saliency figure, the bias audit, CKA "
                     f"and provenance in one self-contained page): `{report}`")
    lines += [f"- probe table: `{md}` (CSV `{csv}`, full results + provenance "
              f"`{Path(md).with_suffix('.json')}`)" for md, csv in tables.items()]
    lines += where
    lines += [f"- caches and split files: `{Path(record['out']) / 'caches'}`; saved probes, "
              f"predictions and confusion figures: `{Path(record['out']) / 'results'}/<dataset>/"
              "probe`", "",
              "Every output carries provenance (versions, git commit, command line, seeds): JSON "
              "sidecars, HDF5 attributes, PNG metadata, and the run record."]
    return "\n".join(lines) + "\n"
