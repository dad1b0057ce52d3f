"""A small study the report tests share: two fast models on the shared breastus phantom (every
stage, then the study's report) and a brain MRI dataset whose root holds no images, so its jobs
fail as a user's would."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import not_a_dataset, write_tiny_registry
from tiny_models import MODEL

MODELS = ("vit_random_64", MODEL)


@pytest.fixture(scope="session")
def study_report(shared_phantom, tmp_path_factory) -> tuple[Path, Path]:
    """(the study's output folder, its report's HTML), run and written once per test run."""
    from vlmprobe.study import run_study
    from vlmprobe.study.record import read_record

    folder = tmp_path_factory.mktemp("report_study")
    not_a_dataset(folder)
    study = folder / "study.yaml"
    study.write_text(f"""\
out: out
models: [{', '.join(MODELS)}]
datasets:
  breastus_phantom:
    root: {shared_phantom}
    stages: {{probe: {{label: [class, word]}}, rise: {{labels: [class, word]}}}}
  brainmr:
    root: brainmr
    stages: {{umap: false, rise: false}}
stages:
  extract: {{num_workers: 0}}
  probe: {{n_bootstrap: 200}}
  umap: {{n_neighbors: [15], min_dist: [0.1], color_by: [word]}}
  rise: {{n_masks: 16, choice: {{k: 1}}, causal_steps: 5}}
  report: {{}}
launcher: {{name: local, jobs: 1}}
""")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMPROBE_REGISTRY", str(write_tiny_registry(folder)))
        mp.setenv("OMP_NUM_THREADS", "1")
        run = run_study(study, progress=False)
        assert not run.ok  # the brain MRI jobs fail, the phantom's finish
    # the study writes its report after the jobs, failed ones included, and records it
    assert run.report == folder / "out" / "report" / "report.html"
    last = read_record(run.record)["runs"][-1]
    assert last["report"]["status"] == "done" and last["report"]["html"] == str(run.report)
    return folder / "out", run.report
