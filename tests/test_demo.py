"""The demo is a small study: phantoms -> study file -> every stage -> a summary read from the run
record, naming every table and figure. Run here with the fast registry entries (a 2-block ViT as
the "model", ``lite0_random_64`` as its null baseline) on 60-image phantoms."""
from pathlib import Path

import pytest

from vlmprobe.demo import DATASETS, run_demo
from vlmprobe.probe import read_table
from vlmprobe.report.build import _slug
from vlmprobe.study import read_record


@pytest.mark.slow
def test_the_demo_study_ends_in_a_summary_of_what_it_found_and_where(tiny_model, tmp_path):
    models = ("vit_random_64", tiny_model)
    options = dict(n=60, site_n=60, n_masks=16, n_images=1, models=models, progress=False)
    summary, report = run_demo(tmp_path / "demo", **options)
    text = summary.read_text()
    record = read_record(tmp_path / "demo" / "run_record.json")
    jobs = record["jobs"]
    named = sorted({p for name in DATASETS for md_csv in jobs[f"probe/{name}"]["outputs"]
                    ["tables"].values() for p in md_csv})  # the class table is shared
    named += [p for name in DATASETS for p in jobs[f"umap/{name}"]["outputs"]["figures"]]
    named += [m[k] for name in DATASETS for m in jobs[f"rise/{models[0]}/{name}"]["outputs"]
              ["maps"] for k in ("figure", "panels", "table", "maps_file")]
    assert len(named) == 3 * 2 + 2 * 4 + 2 * 4  # tables: class, word, site; maps; RISE
    for path in named:
        assert Path(path).exists() and f"`{path}`" in text, path
    for name, (_, nuisance, _) in DATASETS.items():
        md = jobs[f"probe/{name}"]["outputs"]["tables"]["class"][0]
        rows = {r.model: r.test["macro_f1"] for r in read_table(Path(md).with_suffix(".json"))
                if r.dataset == name}
        assert f"a margin of {100 * (rows[models[0]] - rows[models[1]]):+.1f} points" in text
        assert f"The nuisance ({nuisance}) is predictable" in text
    assert text.count("**Where the probes look (RISE, 1 test image(s)") == 2
    page = report.read_text()  # the study's report, beside the summary
    assert report == tmp_path / "demo" / "report" / "report.html" and f"`{report}`" in text
    assert all(f"<section id=\"audit-{_slug(name)}\">" in page for name in DATASETS)
    assert "declares no nuisance column" not in page  # the demo declares word and site

    again, _ = run_demo(tmp_path / "demo", **options)  # everything done: skipped, same summary
    assert again.read_text() == text
    assert read_record(tmp_path / "demo" / "run_record.json")["runs"][1]["counts"]["done"] == 0
