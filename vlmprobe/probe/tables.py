"""Probe tables: one row per result, the paper's shape (rows models, columns datasets) with
pairwise significance, the comparisons themselves, subgroups, and our cells beside the paper's;
each as Markdown, CSV and LaTeX."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path

from ..provenance import provenance
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
             f"resamples of the test {_units(results)}]; with several outer splits: mean ± sd "
             "over splits [CI of the mean over splits]. "
             "t: C = t·d/N chosen by mean validation macro-F1 (ties → smallest t); 'saturated' = "
             "every t gave identical validation predictions. refit: scaler + SVM refit on the "
             "whole training part (the probe RISE explains). " + solver_note(results))
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
                "Paired bootstrap over the same resamples of the test "
                f"{_units(results)} (joined by relative path or group id) of the 5-fold-model "
                "mean: percentile CI of the difference; two-sided p of the bootstrap test by "
                "centring, (1 + #{|d* − d| ≥ |d|}) / (resamples + 1), floor 1/(resamples + 1); "
                "Holm per dataset/label.")
    if paper:
        _write_grid(out_dir / f"{name}.paper",
                    ["model", "dataset", "paper table", "paper metric", "our metric", "ours % [95% CI]",
                     "paper % (mean ± sd)", "ours - paper [CI]", "paper inside our CI", "solver",
                     "bootstrap unit"],
                    compare_paper(results),
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
    (out_dir / f"{name}.json").write_text(json.dumps(
        {"results": [{k: v for k, v in asdict(r).items() if k != "test_samples"} for r in results],
         "comparisons": comparisons, "provenance": provenance(stage="probe")},
        indent=2, default=str))
    return md, csv_path


#: the paper's Tables 3 and 4 (percent, as printed), shipped inside the package
PAPER_TABLES = Path(str(files(__package__) / "paper_tables.csv"))


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
