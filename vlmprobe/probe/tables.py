"""Probe tables: one row per result, the paper's shape (rows models, columns datasets) with
pairwise significance, the comparisons themselves, subgroups, and our cells beside the paper's;
each as Markdown, CSV and LaTeX."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields
from importlib.resources import files
from pathlib import Path

import numpy as np

from ..cache.chunks import write_atomic, written_beside
from ..provenance import provenance
from ..validation import VlmprobeError, read_npz
from . import stats
from .results import ProbeResult


def _pairing_key(r: ProbeResult) -> tuple:
    """What two results must share to be compared on the same resamples: dataset, label view,
    bootstrap unit and the test images of every outer split."""
    s = r.test_samples
    splits = s.get("pairing") or [tuple(sorted(s["ids"]))]
    return (r.dataset, r.label_view, r.bootstrap.get("unit", "image"), tuple(splits))


def compare_models(results: list[ProbeResult], metric: str = "macro_f1") -> list[dict]:
    """Paired bootstrap test of every pair of models scored on the same test images (same
    dataset, label view, bootstrap unit and test images of every split; the same resamples by
    construction), Holm-corrected per group. With several outer splits the difference is that
    of the means over splits, resampled as :func:`vlmprobe.probe.run._over_splits` says."""
    groups: dict[tuple, list[ProbeResult]] = {}
    for r in results:
        if r.test_samples:
            groups.setdefault(_pairing_key(r), []).append(r)
    out = []
    for (dataset, view, _, _), rs in groups.items():
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


def significant_below_best(results: list[ProbeResult], comparisons: list[dict], metric: str):
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
    md, csv_path, tex = (path_stem.with_name(path_stem.name + ext) for ext in (".md", ".csv", ".tex"))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    write_atomic(md, "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n\n"
                 + notes + "\n")
    with written_beside(csv_path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)

    def esc(text: str) -> str:
        for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"),
                     ("#", "\\#"), ("±", "$\\pm$"), ("†", "$^\\dagger$")):
            text = text.replace(a, b)
        return text
    write_atomic(tex, "\\begin{tabular}{" + "l" * len(header) + "}\n\\toprule\n"
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
    (see ``compare_paper``), and ``<name>.samples.npz`` (the per-image test scores that paired
    comparisons need, so a later run can add rows: :func:`read_table`). Returns the first two
    paths."""
    check_one_split(results, out_dir / f"{name}.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    cols = list(rows[0])
    notes = ("Test metrics: mean ± sd (ddof=0) of the 5 fold-models at the selected t on the "
             "held-out 20% test set, [95% percentile bootstrap CI of that mean over seeded "
             f"resamples of the test {_units(results)}]; with several outer splits: mean ± sd "
             "over splits [CI of the mean over splits]. "
             "t: C = t·d/N chosen by mean validation macro-F1 (ties → smallest t); 'saturated' = "
             "every t gave identical validation predictions. refit: scaler + SVM refit on the "
             "whole training part (the probe RISE explains). " + solver_note(results))
    md, csv_path, _ = _write_grid(out_dir / name, cols, [[str(r[c]) for c in cols] for r in rows],
                                  notes)
    comparisons = compare_models(results)
    marked = significant_below_best(results, comparisons, "macro_f1")
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
                "Paired bootstrap over the same resamples of the test "
                f"{_units(results)} (joined by relative path or group id) of the 5-fold-model "
                "mean: percentile CI of the difference; two-sided p of the bootstrap test by "
                "centring, (1 + #{|d* − d| ≥ |d|}) / (resamples + 1), floor 1/(resamples + 1); "
                "Holm per dataset/label.")
    if paper:
        _write_grid(out_dir / f"{name}.paper",
                    PAPER_HEADER, compare_paper(results),
                    "Ours: mean of the 5 fold-models on the test set (with several outer splits: "
                    "the mean over splits) with its bootstrap CI; the paper's values as printed "
                    "(rounded). Cells without a paper value are omitted. " + solver_note(results))
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
    write_atomic(out_dir / f"{name}.samples.npz", _samples_bytes(results))
    write_atomic(out_dir / f"{name}.json", json.dumps(
        {"results": [{k: v for k, v in asdict(r).items() if k != "test_samples"} for r in results],
         "comparisons": comparisons, "provenance": provenance(stage="probe")},
        indent=2, default=str).encode())
    return md, csv_path


def table_name(config, label: str | None = None) -> str:
    """``probe_results`` plus every setting that changes the table's numbers, so runs with other
    settings write other tables (rows of one setting merge: :func:`merge_results`)."""
    default = type(config)()
    parts = ["probe_results"]
    parts += [config.probe] if config.probe != "svm" else []
    parts += [f"{config.few_shot}-shot"] if config.few_shot else []
    parts += [f"label-{label}"] if label is not None else []
    parts += ["shuffled-labels"] if config.shuffle_labels else []
    parts += [config.split] if config.split != "paper" else []
    named = {"probe", "few_shot", "shuffle_labels", "split"}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in named | _SAME_NUMBERS or value == getattr(default, f.name):
            continue
        text = "_".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
            if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{f.name.replace('_', '-')}-{text}")
    return ".".join(parts)


#: settings that leave every number of a table as it is (where and how fast it is computed,
#: which subgroup breakdowns are added)
_SAME_NUMBERS = {"device", "n_jobs", "subgroups"}


def check_one_split(results: list[ProbeResult], where: Path) -> None:
    """One dataset and label view, one split: rows scored on other test images cannot share a
    table column (their comparisons and † marks would be meaningless)."""
    seen: dict[tuple, ProbeResult] = {}
    for r in results:
        first = seen.setdefault((r.dataset, r.label_view), r)
        if r.split_files != first.split_files:
            raise VlmprobeError(
                f"{where}: {r.name} on {r.dataset} [{r.label_view}] was scored on split "
                f"{', '.join(r.split_files)}, but {first.name} on split "
                f"{', '.join(first.split_files)}; one table holds one split per dataset. Write "
                f"these results to another directory (--out), or delete {where.name} and its "
                "sibling files to start the table afresh.")


def _samples_bytes(results: list[ProbeResult]) -> bytes:
    """Every result's per-image test arrays, flattened to ``<row>/<key>[/<sub>]`` (no pickle)."""
    arrays = {}
    for i, r in enumerate(results):
        for key, value in r.test_samples.items():
            for sub, v in (value.items() if isinstance(value, dict) else [("", value)]):
                arrays[f"{i}/{key}" + (f"/{sub}" if sub else "")] = np.asarray(v)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_table(json_path: Path) -> list[ProbeResult]:
    """The results a table holds (its JSON and per-image samples), as :class:`ProbeResult`."""
    try:
        doc = json.loads(Path(json_path).read_text())
    except (OSError, ValueError) as e:
        raise VlmprobeError(f"{json_path} (with its .samples.npz) is not a readable probe table "
                            f"({e}); delete it to start the table afresh.") from None
    samples = read_npz(Path(json_path).with_suffix(".samples.npz"), "probe table's samples",
                       f"delete it and {json_path} to start the table afresh.")
    nested: dict[int, dict] = {}
    for name in samples:
        i, key, *sub = name.split("/")
        row, value = nested.setdefault(int(i), {}), samples[name]
        if value.dtype.kind == "U":  # image ids: a list, or one tuple of them per outer split
            value = [tuple(v) for v in value.tolist()] if value.ndim == 2 else value.tolist()
        if sub:
            row.setdefault(key, {})[sub[0]] = value
        else:
            row[key] = value
    try:
        return [ProbeResult.from_dict(fields_, nested.get(i, {}))
                for i, fields_ in enumerate(doc["results"])]
    except TypeError as e:
        raise VlmprobeError(f"{json_path} was written by another vlmprobe version ({e}); delete "
                            "it (and its sibling files) to start the table afresh.") from None


def merge_results(old: list[ProbeResult], new: list[ProbeResult]) -> list[ProbeResult]:
    """``old`` rows with those of ``new`` replacing the ones with the same key, in table order."""
    keys = {r.key for r in new}
    return [r for r in old if r.key not in keys] + list(new)


#: the paper's Tables 3 and 4 (percent, as printed), shipped inside the package
PAPER_TABLES = Path(str(files(__package__) / "paper_tables.csv"))


#: the columns of :func:`compare_paper`'s rows
PAPER_HEADER = ["model", "dataset", "paper table", "paper metric", "our metric", "ours % [95% CI]",
                "paper % (mean ± sd)", "ours - paper [CI]", "paper inside our CI", "solver",
                "bootstrap unit"]


def compare_paper(results: list[ProbeResult], paper_csv: Path = PAPER_TABLES) -> list[list[str]]:
    """Per model × dataset cell of the paper's Tables 3/4: ours [95% CI], the paper's, and
    ours - paper with its CI. The paper's 'F1' is unspecified, so it is set against our
    macro-F1 and, for 2-class sets, our binary F1 (positive = the disease class)."""
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
                         "yes" if lo <= p <= hi else "no", _solver_name(r),
                         r.bootstrap.get("unit", "image")])
    return rows


def _units(results: list[ProbeResult]) -> str:
    """What the bootstrap resampled: "images", "groups (patients or lesions)" or both."""
    names = {"image": "images", "group": "groups (patients or lesions; an image without a "
                                         "group id is its own)"}
    return " or ".join(names[u] for u in sorted({r.bootstrap.get("unit", "image")
                                                 for r in results}))


def _solver_name(r: ProbeResult) -> str:
    if r.probe != "svm":
        return r.probe
    return f"{r.solver} (tol {r.tol:g}, max_iter {r.max_iter})"


SOLVER_NOTES = {
    "fast": "SVM solver 'fast': LinearSVC's objective (squared hinge, L2, one-vs-rest, "
            "penalised intercept) minimised to its optimum (gradient ≤ tol·‖w‖) by active-set "
            "Newton; the paper's LinearSVC with its defaults (tol 1e-4, max_iter 1000) can stop "
            "early at large C, so its numbers may differ (--solver sklearn reproduces it; "
            "benchmarks/RESULTS.md measures by how much).",
    "sklearn": "SVM solver 'sklearn': scikit-learn's LinearSVC with the paper's defaults (tol "
               "1e-4, max_iter 1000), which can stop before the optimum at large C ('converged' "
               "says where).",
}


def solver_note(results: list[ProbeResult]) -> str:
    """The table caption's word on which SVM solver made the rows, and why it matters."""
    return " ".join(SOLVER_NOTES[s] for s in sorted({r.solver for r in results
                                                     if r.probe == "svm" and r.solver}))
