"""The report: its tables equal the probe JSON they came from, the paper's cells stand beside
ours, every section is there, a job that failed leaves its cells marked with the reason, and an
older run record names what to rerun."""
from __future__ import annotations

import json
import re
from html import escape

import numpy as np
import pytest
from typer.testing import CliRunner

from vlmprobe.cache import Cache, read_cache, write_cache
from vlmprobe.cli import app
from vlmprobe.probe import ProbeConfig, run_probe
from vlmprobe.report import linear_cka, run_report
from vlmprobe.validation import VlmprobeError

SECTIONS = ("overview", "probe", "paper", "umap", "rise", "audit", "cka", "provenance")


def _cells_match_json(report, html: str) -> int:
    """Every probe cell of the report equals its row in the table's JSON (read as plain JSON),
    and its text is in the HTML; returns how many cells were checked."""
    checked = 0
    for c in report.cells:
        rows = json.loads(open(c.source).read())["results"]
        row = next(r for r in rows if r["dataset"] == c.dataset and r["label_view"] == c.label
                   and r["model"] + (" (baseline)" if r["baseline"] else "")
                   + (" (shuffled labels)" if r["shuffled_labels"] else "") == c.name)
        lo, hi = row["test_ci95"][c.metric]
        assert (c.value, c.ci_low, c.ci_high) == (row["test"][c.metric], lo, hi)
        text = f"{100 * row['test'][c.metric]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        assert text in html, text
        checked += 1
    return checked


def test_a_cache_directory_report_shows_its_probe_table_cell_for_cell(phantom_cache, tmp_path):
    _, path = phantom_cache
    cache_dir = path.parent.parent
    run_probe([read_cache(path)], ProbeConfig(n_bootstrap=100)).save(cache_dir)
    report = run_report(cache_dir, out=tmp_path / "report", audit=False)
    html_path, md_path = report.write()
    html = html_path.read_text()
    assert _cells_match_json(report, html) == 1  # macro-F1 (3 classes: no binary F1)
    assert all(f'<section id="{s}">' in html for s in SECTIONS)
    assert "Fewer than two models" in html  # CKA needs two
    assert "# vlmprobe report" in md_path.read_text()
    result = CliRunner().invoke(app, ["report", str(cache_dir), "--out", str(tmp_path / "cli"),
                                      "--no-audit"])
    assert result.exit_code == 0, result.output
    before_provenance = html.split('<section id="provenance">')[0]  # which has the time
    assert (tmp_path / "cli" / "report.html").read_text().startswith(before_provenance)


def test_an_older_run_record_names_the_study_to_rerun(tmp_path):
    (tmp_path / "run_record.json").write_text(json.dumps(
        {"schema": "vlmprobe-study-record", "schema_version": 0, "study_file": "my_study.yaml",
         "jobs": {}, "runs": []}))
    with pytest.raises(VlmprobeError, match=r"older vlmprobe \(run record schema 0.*lacks "
                                            r"resolved, out.*vlmprobe study my_study.yaml"):
        run_report(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "my_study.yaml" in str(result.exception)


@pytest.mark.slow
def test_the_report_of_a_study_with_failed_jobs(study_report, tmp_path):
    out, html_path = study_report
    html = html_path.read_text()
    md = html_path.with_suffix(".md").read_text()
    assert all(f'<section id="{s}">' in html for s in SECTIONS)
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)  # everything inside
    # the failed dataset: its cells marked, the reason shown
    assert "extract/vit_random_64/brainmr failed" in html and "Missing cells: brainmr" in html
    assert "brainmr / lite0_random_64 (baseline) (extract/lite0_random_64/brainmr failed" in html
    assert "<td>lite0_random_64</td>" not in html  # the twin is named as a baseline throughout
    assert html.count('class="missing"') >= 2
    record = json.loads((out / "run_record.json").read_text())
    reason = record["jobs"]["extract/vit_random_64/brainmr"]["reason"].splitlines()[0]
    assert escape(reason) in html and reason in md
    # the probe cells equal their JSON; the audit and CKA are there
    report = run_report(out, out=html_path.parent)  # fits are read back, not refitted
    assert _cells_match_json(report, html) == 2 + 2 + 2  # class, its floor, word
    assert {(a["column"], a["model"]) for a in report.audit} == {
        ("word", "vit_random_64"), ("word", "lite0_random_64 (baseline)")}
    assert report.cka["breastus_phantom"].models == ["vit_random_64", "lite0_random_64 (baseline)"]
    assert "cka.breastus-phantom" in md and "RISE panels: vit_random_64" in html
    # the report's own floor rows (a table of their own, beside it) are among those cells
    floors = {c.source for c in report.cells if "(shuffled labels)" in c.name}
    assert len(floors) == 1 and str(html_path.parent / "fits") in floors.pop()
    # a study stopped before its UMAP job: the record lacks it, the report says so
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    del record["jobs"]["umap/breastus_phantom"]
    (stopped / "run_record.json").write_text(json.dumps(record))
    page = run_report(stopped, audit=False).write()[0].read_text()
    umap = page.split('<section id="umap">')[1].split('<section id="rise">')[0]
    assert "No maps: umap/breastus_phantom missing: not in the run record" in umap
    # linked instead of embedded: relative links that resolve
    linked = run_report(out, out=tmp_path / "linked", embed=False)
    page = linked.write()[0].read_text()
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (page and (tmp_path / "linked" / src).resolve().is_file()), src


def test_the_papers_numbers_stand_beside_ours_for_its_models_and_datasets(tmp_path):
    """Two of the paper's models on BUSI (synthetic embeddings written as their caches): the
    paper's Table 3 cells beside ours, with the solver; the CKA of the two."""
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    relpaths = [f"img{i:04d}.png" for i in range(len(y))]
    X = rng.normal(size=(3, 12))[y] * 2 + rng.normal(size=(len(y), 12))
    embeddings = {"medsiglip": X, "biomedclip": X @ rng.normal(size=(12, 8))}
    for model, Z in embeddings.items():
        write_cache(tmp_path / "caches" / "breastus" / f"{model}.h5", Cache(
            embeddings=Z.astype(np.float32), labels=y, relpaths=relpaths,
            class_names=["normal", "benign", "malignant"], model=model, dataset="breastus",
            dataset_fingerprint="f", cache_key=model,
            files={"relpath": relpaths, "size": [1] * len(y), "digest": ["d"] * len(y)}))
    run = run_probe(tmp_path / "caches", ProbeConfig(n_bootstrap=200))
    run.save(tmp_path / "caches")
    report = run_report(tmp_path / "caches", audit=False)
    html = report.write()[0].read_text()
    paper = html.split('<section id="paper">')[1].split("</section>")[0]
    assert paper.count("<td>Table 3</td>") == 4  # accuracy and F1 of each model
    ours = {r.model: r for r in run}
    lo, hi = ours["medsiglip"].test_ci95["accuracy"]
    assert (f"<td>{100 * ours['medsiglip'].test['accuracy']:.1f} [{100 * lo:.1f}, "
            f"{100 * hi:.1f}]</td><td>82 ± 2.3</td>") in paper
    assert "Solver: fast (tol 0.001, max_iter 200)" in paper
    cka = report.cka["breastus"]
    assert cka.models == ["biomedclip", "medsiglip"] and cka.n_images == len(y)
    assert cka.linear[0, 1] == pytest.approx(linear_cka(embeddings["biomedclip"], X), rel=1e-5)
