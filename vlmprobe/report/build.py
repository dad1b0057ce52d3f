"""The report of a study: every section built from its outputs (:mod:`.sources`) into one
:class:`~.document.Document`, written as a self-contained HTML file and as Markdown.

Sections: the probe tables (the paper's shape, with CIs, the best model, Holm-corrected paired
marks and the null rows), the paper's numbers beside ours, the UMAP maps with their metrics, the
RISE numbers and panels, the background-bias audit (each declared nuisance column against its
shuffled-label floor), CKA between the models, and provenance. A job that did not finish leaves
its cells marked with the reason; nothing else is lost.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure as MplFigure

from ..cache import read_cache
from ..cache.chunks import write_atomic
from ..figures import save_figure, styled
from ..probe import ProbeResult, read_table
from ..probe.tables import (PAPER_HEADER, compare_models, compare_paper, significant_below_best,
                            solver_note)
from ..provenance import provenance
from ..rise.explain import means_by_probe
from ..validation import VlmprobeError, config, with_options
from . import fits
from .cka import CkaResult, cka_matrix
from .document import (Cell, Code, Details, Document, Figure, Page, Para, Section, Table, to_html,
                       to_markdown)
from .sources import CLASS, DatasetRun, Source, read_json, read_source

log = logging.getLogger(__name__)

#: above this many MB of figures and maps the HTML links them instead of embedding them
EMBED_LIMIT_MB = 50
RISE_NUMBERS = (("lesion_mass", "lesion share"), ("lesion_enrichment", "lesion ÷ area"),
                ("text_mass", "text-box share"), ("text_enrichment", "text ÷ area"),
                ("deletion_auc", "deletion AUC"), ("insertion_auc", "insertion AUC"),
                ("split_half_r", "split-half r"), ("random_probe_rank_r", "random-probe rank r"))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci_cell(r: ProbeResult, metric: str) -> str:
    """'mean [lo, hi]' in percent, the number a reader compares."""
    lo, hi = r.test_ci95[metric]
    return f"{_pct(r.test[metric])} [{_pct(lo)}, {_pct(hi)}]"


def is_null(r: ProbeResult) -> bool:
    """A null baseline row: a random-init twin, the pixels, or shuffled training labels."""
    return r.baseline or r.shuffled_labels or r.pca_dim > 0 or r.model == "pixels"


@dataclass
class ProbeCell:
    """One number of a probe table and the table JSON it came from."""

    label: str
    dataset: str
    name: str
    metric: str
    value: float
    ci_low: float
    ci_high: float
    source: str


@dataclass
class Report:
    """A study's report: the document, and the numbers in it (probe cells, CKA, the audit)."""

    source: Source
    document: Document
    folder: Path
    cells: list[ProbeCell] = field(default_factory=list)
    cka: dict[str, CkaResult] = field(default_factory=dict)
    audit: list[dict] = field(default_factory=list)
    embed: bool = True

    def to_frame(self):
        """One row per probe-table number: label, dataset, model, metric, value, CI, source."""
        import pandas as pd

        return pd.DataFrame([vars(c) for c in self.cells])

    def write(self) -> tuple[Path, Path]:
        """``report.html`` (self-contained unless too large) and ``report.md`` in the folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        html_path, md_path = self.folder / "report.html", self.folder / "report.md"
        write_atomic(html_path, to_html(self.document, self.folder, self.embed))
        write_atomic(md_path, to_markdown(self.document, self.folder))
        log.info(f"report: {html_path} ({html_path.stat().st_size / 1e6:.1f} MB), "
                 f"Markdown {md_path}")
        return html_path, md_path


class _Builder:
    def __init__(self, source: Source, folder: Path, config: ReportConfig):
        self.source, self.folder, self.config = source, folder, config
        self.report = Report(source, Document("", "", []), folder)
        self._tables: dict[Path, list[ProbeResult] | str] = {}
        self._caches: dict[Path, object] = {}

    # -- inputs ---------------------------------------------------------------------------------
    def table(self, path: Path) -> list[ProbeResult] | str:
        """A table's rows, or why it cannot be read."""
        if path not in self._tables:
            try:
                self._tables[path] = read_table(path)
            except VlmprobeError as e:
                self._tables[path] = str(e)
        return self._tables[path]

    def rows(self, d: DatasetRun, label: str) -> list[ProbeResult]:
        path = d.tables.get(label)
        got = self.table(path) if path else []
        if isinstance(got, str):
            return []
        if d.rows is not None:
            return [r for r in got if (r.name, r.dataset, r.label_view) in d.rows]
        return [r for r in got if r.dataset == d.name and r.label_view == label]

    def caches(self, d: DatasetRun) -> list:
        out = []
        for model in d.models:
            if model in d.caches:
                self.name(d, model)  # reads it once
                out.append(self._caches[d.caches[model]])
        return out

    def name(self, d: DatasetRun, model: str) -> str:
        """A study model as tables name it ("(baseline)" for a random-weight twin), from its
        cache of ``d`` or, where that is missing, of another dataset."""
        path = d.caches.get(model) or next((o.caches[model] for o in self.source.datasets
                                            if model in o.caches), None)
        if path is None:
            return model
        if path not in self._caches:
            self._caches[path] = read_cache(path)
        return model + (" (baseline)" if self._caches[path].baseline else "")

    def floor(self, d: DatasetRun, label: str | None) -> tuple[list[ProbeResult], str]:
        """The shuffled-label probes of ``label`` (None: the class), or why there are none."""
        return self.fit(d, label, shuffled=True)

    def fit(self, d: DatasetRun, label: str | None, shuffled: bool):
        caches = self.caches(d)
        if d.probe is None or not caches:
            return [], "no probe settings or no cache for this dataset"
        try:
            return fits.fit(caches, d.probe, label, shuffled, self.folder / "fits" / d.name), ""
        except VlmprobeError as e:
            return [], str(e).splitlines()[0]

    # -- sections -------------------------------------------------------------------------------
    def build(self) -> Report:
        src = self.source
        n_bad = [j for j in src.jobs if not j.ok]
        record = src.record
        what = (f"the study {record.get('study_file')}" if record else
                f"the cache directory {src.path}")
        title = "vlmprobe report: " + (Path(record["study_file"]).stem if record
                                       else src.path.name)
        subtitle = (f"From {what}: {len(src.datasets)} dataset(s), "
                    f"{len({m for d in src.datasets for m in d.models})} model(s)."
                    + (f" {len(n_bad)} job(s) did not finish; their cells are marked."
                       if n_bad else ""))
        sections = [self.overview(), self.probe(), self.paper(), self.umap(), self.rise(),
                    self.audit(), self.cka(), self.provenance()]
        self.report.document = Document(title, subtitle, sections)
        return self.report

    def overview(self) -> Section:
        blocks = [Para("Test metrics follow the paper's protocol (docs/protocol.md): 5 "
                       "fold-models at the selected C, scored on the held-out 20% test set, "
                       "with 95% bootstrap CIs. Null baselines (random-weight twins, pixels, "
                       "shuffled training labels) sit in their own rows: a model is worth "
                       "reading only where it beats them.")]
        bad = [j for j in self.source.jobs if not j.ok]
        if bad:
            blocks.append(Para(f"{len(bad)} job(s) did not finish; their cells are marked "
                               "'—' with the reason:", "warn"))
            blocks.append(Table(["job", "status", "reason", "log"],
                                [[j.id, j.status, j.why().split(": ", 1)[-1], j.log]
                                 for j in bad]))
        return Section("overview", "Overview", blocks)

    def probe(self) -> Section:
        blocks = []
        labels = list(dict.fromkeys([CLASS] + [lab for d in self.source.datasets
                                               for lab in d.tables]))
        for label in labels:
            blocks += self.probe_table(label)
        if not blocks:
            blocks = [Para("No probe ran in this study.", "note")]
        return Section("probe", "Probe tables", blocks)

    def probe_table(self, label: str) -> list:
        datasets = [d for d in self.source.datasets if label in d.tables or
                    (label == CLASS and d.problem("probe"))]
        if not datasets:
            return []
        per = {d.name: self.rows(d, label) for d in datasets}
        if label == CLASS and self.config.audit:  # the shuffled-label floor: a null row
            for d in datasets:
                per[d.name] += self.floor(d, None)[0]
        binary = {d.name: any(r.positive_class for r in per[d.name]) for d in datasets}
        header = ["model"]
        for d in datasets:
            header += [f"{d.name} macro-F1 %"] + ([f"{d.name} binary F1 %"] if binary[d.name]
                                                  else [])
        names = list(dict.fromkeys([self.name(d, m) for d in datasets for m in d.models]
                                   + [r.name for rs in per.values() for r in rs]))
        real_names = [n for n in names if not any(is_null(r) for rs in per.values()
                                                  for r in rs if r.name == n)]
        null_names = [n for n in names if n not in real_names]
        marks = {}
        for d in datasets:
            rs = per[d.name]
            real = [r for r in rs if not is_null(r)]
            if real:
                best = max(real, key=lambda r: r.test["macro_f1"])
                marks[(d.name, best.name)] = "best"
            for _, _, name in significant_below_best(real, compare_models(real), "macro_f1"):
                marks[(d.name, name)] = "below"
        rows, missing = [], {}
        for name in real_names + null_names:
            row = [name]
            for d in datasets:
                r = next((r for r in per[d.name] if r.name == name), None)
                if r is None:
                    model = next((m for m in d.models if self.name(d, m) == name), name)
                    reason = (d.problem("extract", model) or d.problem("probe")
                              or self.unreadable(d, label) or "no result for this model")
                    if name in {self.name(d, m) for m in d.models} or d.problem("probe"):
                        missing.setdefault(reason, []).append(f"{d.name} / {name}")
                    cells = [Cell("—", "missing", reason)]
                    row += cells * (2 if binary[d.name] else 1)
                    continue
                mark = "null" if is_null(r) else marks.get((d.name, name), "")
                text = _ci_cell(r, "macro_f1") + (" †" if mark == "below" else "")
                row.append(Cell(text, mark))
                self.cell(label, d, r, "macro_f1")
                if binary[d.name]:
                    row.append(Cell(_ci_cell(r, "binary_f1") if "binary_f1" in r.test else "n/a",
                                    "null" if is_null(r) else ""))
                    if "binary_f1" in r.test:
                        self.cell(label, d, r, "binary_f1")
            rows.append(row)
        groups = {len(real_names): "null baselines"} if null_names else {}
        results = [r for rs in per.values() for r in rs]
        caption = ("Test macro-F1 % [95% bootstrap CI] (the headline), and for 2-class "
                   "datasets the binary F1 of the positive (disease) class beside it. Bold: the "
                   "best model of the column; †: below it in a paired bootstrap test on the "
                   "same test images, Holm-corrected per column, p < 0.05. Null rows: "
                   "random-weight twins (baseline), pixels, shuffled training labels (the "
                   "floor a feature set must beat). " + solver_note(results))
        title = "The class" if label == CLASS else f"The label '{label}'"
        blocks = [Section(f"probe-{_slug(label)}", title, [], level=3),
                  Table(header, rows, caption, groups)]
        if missing:
            blocks.append(Para("Missing cells: " + "; ".join(
                f"{', '.join(cells)} ({reason})" for reason, cells in missing.items()), "warn"))
        comparisons = compare_models([r for r in results if not r.shuffled_labels])
        if comparisons:
            blocks.append(Details(f"Paired comparisons ({len(comparisons)})", [Table(
                ["dataset", "label", "model A", "model B", "A − B %", "95% CI %", "p",
                 "p (Holm)"],
                [[c["dataset"], c["label"], c["model_a"], c["model_b"],
                  f"{100 * c['difference']:+.1f}",
                  f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]", f"{c['p']:.4f}",
                  f"{c['p_holm']:.4f}"] for c in comparisons],
                "Macro-F1 difference on the same bootstrap resamples of the same test images; "
                "two-sided p by centring; Holm per dataset and label.")]))
        return blocks

    def unreadable(self, d: DatasetRun, label: str) -> str:
        got = self.table(d.tables[label]) if label in d.tables else []
        return got.splitlines()[0] if isinstance(got, str) else ""

    def cell(self, label: str, d: DatasetRun, r: ProbeResult, metric: str) -> None:
        lo, hi = r.test_ci95[metric]
        source = str(fits.table_path(d.probe, None if label == CLASS else label, True,
                                     self.folder / "fits" / d.name)
                     if r.shuffled_labels else d.tables.get(label, ""))
        self.report.cells.append(ProbeCell(label, d.name, r.name, metric, r.test[metric], lo,
                                           hi, source))

    def paper(self) -> Section:
        results = [r for d in self.source.datasets for r in self.rows(d, CLASS)]
        rows = compare_paper(results)
        if not rows:
            return Section("paper", "The paper's numbers beside ours", [Para(
                "None of this study's model × dataset cells is in the paper's Tables 3/4 "
                "(Takeda & Sakai, 2026), so there is nothing to set beside them.", "note")])
        solvers = sorted({row[-2] for row in rows})
        return Section("paper", "The paper's numbers beside ours", [Table(
            PAPER_HEADER, rows,
            "Ours: the mean of the 5 fold-models on the test set with its bootstrap CI; the "
            "paper's as printed. The paper's 'F1' is unspecified: it is set against our "
            f"macro-F1 and, for 2-class sets, binary F1. Solver: {', '.join(solvers)}. "
            + solver_note(results))])

    def umap(self) -> Section:
        blocks = []
        for d in self.source.datasets:
            problem = d.problem("umap")
            blocks.append(Section(f"umap-{_slug(d.name)}", d.name, [], level=3))
            if problem:
                blocks.append(Para(f"No maps: {problem}", "warn"))
                continue
            rows = []
            for path in d.umap_metrics:
                doc = read_json(path)
                meta = doc.get("provenance", {})
                for row in doc.get("rows", []):
                    rows.append([self.name(d, meta.get("model", path.stem)),
                                 str(row.get("n_neighbors")),
                                 str(row.get("min_dist")), _num(row.get("trustworthiness")),
                                 _num(row.get("knn_preservation")),
                                 _num(row.get("knn_acc_2d")), _num(row.get("knn_acc_orig"))])
            if rows:
                blocks.append(Table(
                    ["model", "n_neighbors", "min_dist", "trustworthiness",
                     "kNN preservation", "kNN acc. (2-D)", "kNN acc. (original)"], rows,
                    "Trustworthiness: are a point's 2-D neighbours its neighbours in the "
                    "embedding (1 = all)? kNN preservation: share of each point's k nearest "
                    "neighbours kept in 2-D. kNN accuracy of the class in 2-D and in the "
                    "original space (docs/protocol.md, UMAP)."))
            compare = [p for p in d.umap_figures if p.name.startswith("compare")
                       and p.suffix == ".png"]
            single = [p for p in d.umap_figures if p not in compare and p.suffix == ".png"]
            blocks += [Figure(p, f"{d.name}: the models side by side ({p.stem})")
                       for p in compare]
            if single:
                blocks.append(Details(f"Each map of {d.name} ({len(single)})",
                                      [Figure(p, p.stem) for p in single]))
            if d.umap_pages:
                blocks.append(Details(
                    f"Interactive maps of {d.name} ({len(d.umap_pages)}): hover for the "
                    "image, recolour by the class or any metadata column",
                    [Page(p, p.stem) for p in d.umap_pages]))
        return Section("umap", "UMAP maps", blocks or [Para("No UMAP stage ran.", "note")])

    def rise_numbers(self, path: Path) -> tuple[dict, dict]:
        """Per probe the mean of each RISE number over the explained images, and the config."""
        doc = read_json(path)
        images = doc.get("images", [])
        means = means_by_probe(images, [k for k, _ in RISE_NUMBERS])
        return ({p: m | {"n": sum(r["probe"] == p for r in images)} for p, m in means.items()},
                doc)

    def rise(self) -> Section:
        blocks = []
        for d in self.source.datasets:
            jobs = [j for j in d.jobs if j.stage == "rise"]
            if not d.rise and not jobs:
                continue
            blocks.append(Section(f"rise-{_slug(d.name)}", d.name, [], level=3))
            blocks += [Para(f"No RISE maps: {j.why()}", "warn") for j in jobs if not j.ok]
            for path in d.rise:
                numbers, doc = self.rise_numbers(path)
                meta, cfg = doc.get("provenance", {}), doc.get("config", {})
                model = self.name(d, meta.get("model", path.stem))
                rows = [[probe, str(v["n"])] + [_num(v[k]) for k, _ in RISE_NUMBERS]
                        for probe, v in numbers.items()]
                blocks.append(Table(
                    ["probe", "images"] + [h for _, h in RISE_NUMBERS], rows,
                    f"RISE of {model} (N={cfg.get('n_masks')} masks, seed {cfg.get('seed')}): "
                    "share of positive saliency on the lesion / text boxes, and that share ÷ "
                    "their share of the image (1 = no preference); deletion / insertion AUC of "
                    "the class probability (lower / higher is better); sanity checks: "
                    "split-half reliability r (≥ 0.5 to read the maps) and rank r with a "
                    "random-weight probe's map (near 0 expected). n/a: no lesion mask or no "
                    "text box."))
                overview = path.with_suffix(".png")
                if overview.is_file():
                    blocks.append(Figure(overview, f"RISE panels: {model} on {d.name}"))
        return Section("rise", "RISE saliency", blocks or [Para("No RISE stage ran.", "note")])

    def audit(self) -> Section:
        blocks = [Para("For each column a dataset declares as a nuisance (nuisance_columns in "
                       "datasets.yaml: how an image was made, not what it shows), how well a "
                       "probe predicts it from each model's features, against the floor of the "
                       "same probe trained on shuffled labels. Far above the floor: the "
                       "features carry the nuisance, and a classifier on them can use it as a "
                       "shortcut.")]
        if not self.config.audit:
            return Section("audit", "Background-bias audit",
                           [Para("Not computed (--no-audit).", "note")])
        for d in self.source.datasets:
            blocks.append(Section(f"audit-{_slug(d.name)}", d.name, [], level=3))
            if not d.nuisance:
                blocks.append(Para("The dataset declares no nuisance column.", "note"))
                continue
            text = self.text_shares(d)
            rows = []
            for column in d.nuisance:
                probed = self.rows(d, column) if column in d.tables else None
                why = ""
                if not probed:
                    probed, why = self.fit(d, column, shuffled=False)
                floor, why_floor = self.floor(d, column)
                for cache in self.caches(d):
                    name = cache.model + (" (baseline)" if cache.baseline else "")
                    r = next((r for r in probed if r.model == cache.model), None)
                    f = next((r for r in floor if r.model == cache.model), None)
                    above = ("yes" if r and f and r.test_ci95["macro_f1"][0]
                             > f.test_ci95["macro_f1"][1] else "no" if r and f else "n/a")
                    self.report.audit.append({
                        "dataset": d.name, "column": column, "model": name,
                        "macro_f1": r.test["macro_f1"] if r else None,
                        "floor_macro_f1": f.test["macro_f1"] if f else None,
                        "above_floor": above, "text_enrichment": text.get(cache.model)})
                    rows.append([column, name,
                                 Cell(_ci_cell(r, "macro_f1")) if r else
                                 Cell("—", "missing", why),
                                 Cell(_ci_cell(f, "macro_f1"), "null") if f else
                                 Cell("—", "missing", why_floor),
                                 Cell(above, "best" if above == "yes" else ""),
                                 _num(text.get(cache.model)) if text else "n/a"])
                blocks += [Para(f"{column}: {w}", "warn") for w in {why, why_floor} if w]
            blocks.append(Table(
                ["nuisance column", "model", "macro-F1 % [95% CI]",
                 "shuffled-label floor % [95% CI]", "above the floor", "RISE text ÷ area"],
                rows, "Above the floor: the CIs do not overlap. RISE text ÷ area: the class "
                      "probe's share of positive saliency on burnt-in text boxes ÷ their share "
                      "of the image (1 = no preference; n/a: no text boxes or no RISE)."))
        return Section("audit", "Background-bias audit", blocks)

    def text_shares(self, d: DatasetRun) -> dict[str, float]:
        """model -> the class probe's mean text enrichment, where the dataset has text boxes."""
        out = {}
        for path in d.rise:
            numbers, doc = self.rise_numbers(path)
            value = numbers.get(CLASS, {}).get("text_enrichment")
            if value is not None and math.isfinite(value):
                out[doc.get("provenance", {}).get("model", path.stem)] = value
        return out

    def cka(self) -> Section:
        blocks = [Para("Centered kernel alignment between the models' embeddings of the same "
                       "images (1: the same up to rotation and scale). Linear CKA and RBF CKA "
                       f"with σ = {self.config.bandwidth:g} × the median pairwise distance (per "
                       "model), both by the debiased HSIC estimator (Song et al., 2012), which "
                       "is near 0 for unrelated embeddings even when the images are few.")]
        for d in self.source.datasets:
            caches = self.caches(d)
            blocks.append(Section(f"cka-{_slug(d.name)}", d.name, [], level=3))
            if len(caches) < 2:
                blocks.append(Para(f"Fewer than two models' caches ({len(caches)}); "
                                   "nothing to compare.", "note"))
                continue
            try:
                cfg = self.config
                m = cka_matrix(caches, cfg.bandwidth, cfg.rbf_images, cfg.seed)
            except VlmprobeError as e:
                blocks.append(Para(str(e), "warn"))
                continue
            self.report.cka[d.name] = m
            folder = self.folder / "figures"
            folder.mkdir(parents=True, exist_ok=True)
            m.to_frame().to_csv(folder / f"cka.{_slug(d.name)}.csv", index=False)
            png = _cka_figure(m, folder / f"cka.{_slug(d.name)}", d.name)
            blocks.append(Figure(png, f"CKA on {d.name}: {m.n_images} images (RBF: {m.n_rbf}, "
                                      f"seed {m.seed})"))
            blocks.append(Table(
                ["model A", "model B", "linear CKA", "linear (plain HSIC)", "RBF CKA",
                 "RBF (plain HSIC)"],
                [[m.models[i], m.models[j], _num(m.linear[i, j]), _num(m.linear_biased[i, j]),
                  _num(m.rbf[i, j]), _num(m.rbf_biased[i, j])]
                 for i in range(len(m.models)) for j in range(i + 1, len(m.models))],
                "σ per model: " + ", ".join(f"{n} {s:.3g}" for n, s in zip(m.models, m.sigma))
                + f" (bandwidth {m.bandwidth:g} × median distance)."))
        return Section("cka", "Model similarity (CKA)", blocks)

    def provenance(self) -> Section:
        src, blocks = self.source, []
        record = src.record
        if record:
            blocks.append(Table(
                ["run", "started", "finished", "command", "vlmprobe", "git commit", "counts"],
                [[str(i), r.get("started", ""), r.get("finished", ""),
                  r.get("command_line", ""), str(r.get("provenance", {}).get("vlmprobe_version", "")),
                  str(r.get("provenance", {}).get("git_commit", "")),
                  json.dumps(r.get("counts", {}))] for i, r in enumerate(record["runs"])],
                f"Study file {record.get('study_file')}; output folder {record.get('out')}."))
            blocks.append(Details("The study file as run", [Code(record.get("study_yaml", ""))]))
            blocks.append(Table(
                ["job", "status", "duration s", "started", "seed", "call"],
                [[j.id, j.status, "" if j.duration_s is None else f"{j.duration_s:.1f}",
                  j.started or "", _seed(record["jobs"].get(j.id)), j.call or ""]
                 for j in src.jobs], "Every job of the study: its status, duration and the "
                                    "API call it made (its log is named in the run record)."))
            if record["runs"]:
                blocks.append(Details("Versions of the latest run", [Code(json.dumps(
                    record["runs"][-1].get("provenance", {}), indent=1, default=str))]))
        caches = [c for d in src.datasets for c in self.caches(d)]
        blocks.append(Table(
            ["model", "dataset", "images", "cache key", "weights sha256", "precision"],
            [[c.model + (" (baseline)" if c.baseline else ""), c.dataset, str(len(c.relpaths)),
              c.cache_key, c.weights_sha256 or "(none: random or no weights file)",
              c.precision] for c in caches], "The caches every number was computed from."))
        splits = sorted({f for d in src.datasets for lab in d.tables
                         for r in self.rows(d, lab) for f in r.split_files})
        if splits:
            blocks.append(Para("Split files: " + ", ".join(splits)))
        blocks.append(Details("This report's provenance", [Code(json.dumps(
            provenance(stage="report", source=str(src.path), **asdict(self.config)), indent=1,
            default=str))]))
        return Section("provenance", "Provenance", blocks)


def _seed(job: dict | None) -> str:
    config = ((job or {}).get("options") or {}).get("config") or {}
    return "" if "seed" not in config else str(config["seed"])


def _num(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3f}"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower()


def _cka_figure(m: CkaResult, stem: Path, dataset: str) -> Path:
    """Two heatmaps, linear and RBF CKA, values written in the cells."""
    with styled():
        size = 1.2 + 0.55 * len(m.models)
        fig = MplFigure(figsize=(2 * size + 1.5, size))
        axes = fig.subplots(1, 2)
        for ax, values, name in ((axes[0], m.linear, "linear CKA"),
                                 (axes[1], m.rbf, f"RBF CKA (σ = {m.bandwidth:g}·median)")):
            image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(m.models)), m.models, rotation=45, ha="right")
            ax.set_yticks(range(len(m.models)), m.models)
            ax.set_title(name)
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 else "black")
        fig.colorbar(image, ax=list(axes), shrink=0.8)
        fig.suptitle(f"CKA between models on {dataset} ({m.n_images} images)")
        return save_figure(fig, stem, provenance(stage="report", figure="cka",
                                                 dataset=dataset))[0]


@config
class ReportConfig:
    """The report's settings, recorded in its provenance.

    ``bandwidth``: the RBF kernel's σ as a fraction of the median pairwise distance;
    ``rbf_images``: the images RBF CKA uses at most (a subsample drawn with ``seed``); ``audit``:
    fit the shuffled-label floors and the nuisance probes; ``embed``: every figure and map inside
    the HTML (None: unless they exceed EMBED_LIMIT_MB)."""

    bandwidth: float = 0.5
    rbf_images: int = 2000
    seed: int = 0
    audit: bool = True
    embed: bool | None = None


def run_report(run_dir: str | Path, config: ReportConfig | None = None, *,
               out: str | Path | None = None, **options) -> Report:
    """The report of a study's output folder (with ``run_record.json``) or of a cache
    directory, not yet written (:meth:`Report.write`). ``out``: its folder (default
    ``<run_dir>/report``); keyword ``options`` change single settings of ``config``
    (:class:`ReportConfig`), e.g. ``run_report(run_dir, audit=False)``."""
    cfg = with_options(config or ReportConfig(), options)
    source = read_source(run_dir)
    folder = Path(out).expanduser().resolve() if out else source.path / "report"
    report = _Builder(source, folder, cfg).build()
    size = sum(p.stat().st_size for p in report.document.assets() if p.is_file())
    report.embed = size <= EMBED_LIMIT_MB * 1e6 if cfg.embed is None else cfg.embed
    if not report.embed:
        log.info(f"report: {size / 1e6:.0f} MB of figures and maps: linked beside the HTML, "
                 "not embedded")
    return report


def write_report(run_dir: str | Path, config: ReportConfig | None = None, *,
                 out: str | Path | None = None, **options) -> tuple[Path, Path]:
    """Builds and writes the report (:func:`run_report`); returns the HTML and Markdown paths."""
    return run_report(run_dir, config, out=out, **options).write()
