"""Studies run end to end on tiny phantoms with ``lite0_random_64``: every stage, a failing dataset
failing only its own jobs, a rerun doing only what is missing, an interrupted extraction resumed
from its chunks, and the slurm launcher's code path through submitit's local executor."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import not_a_dataset
from typer.testing import CliRunner

from vlmprobe.cache import read_cache
from vlmprobe.cli import app
from vlmprobe.data.phantoms import make_phantom
from vlmprobe.probe import read_table
from vlmprobe.study import plan_study, read_record, run_study

REPO = Path(__file__).resolve().parents[2]


def _record(out: Path) -> dict:
    return read_record(out / "run_record.json")


def _one_dataset_study(tmp_path: Path, model: str, root: Path, extract: str, rest: str) -> Path:
    """A study of ``model`` on the phantom at ``root``: extract options, then the rest."""
    study = tmp_path / "study.yaml"
    study.write_text(f"out: out\nmodels: [{model}]\n"
                     f"datasets: {{breastus_phantom: {{root: {root}}}}}\nstages:\n"
                     f"  extract: {{{extract}}}\n  probe: {{n_bootstrap: 20}}\n{rest}")
    return study


@pytest.mark.slow
def test_a_failing_dataset_fails_only_its_jobs_and_a_rerun_does_only_those(
        shared_phantom, tiny_model, tmp_path):
    broken = not_a_dataset(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(f"""\
out: out
models: [{tiny_model}]
datasets:
  breastus_phantom:
    root: {shared_phantom}
    stages: {{probe: {{label: [class, word]}}, rise: {{labels: [class, word]}}}}
  brainmr:
    root: brainmr
    stages: {{umap: false}}
stages:
  extract: {{num_workers: 0}}
  probe: {{n_bootstrap: 50}}
  umap: {{n_neighbors: [15], min_dist: [0.1], color_by: [word]}}
  rise: {{n_masks: 16, choice: {{k: 1}}, include_baselines: true, causal_steps: 0}}
""")
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["study", str(study)])
    assert first.exit_code == 1, first.output
    assert "3 job(s) failed; fix the cause" in first.output
    record = _record(out)
    jobs = record["jobs"]
    bus = [f"extract/{tiny_model}/breastus_phantom", "probe/breastus_phantom",
           "umap/breastus_phantom", f"rise/{tiny_model}/breastus_phantom"]
    brain = [f"extract/{tiny_model}/brainmr", "probe/brainmr", f"rise/{tiny_model}/brainmr"]
    assert list(jobs) == bus + brain and record["study_yaml"] == study.read_text()
    assert all(jobs[j]["status"] == "done" and jobs[j]["run"] == 0 for j in bus)
    failed = jobs[brain[0]]
    assert failed["status"] == "failed" and "has none of the class folders" in failed["reason"]
    assert str(broken) in failed["reason"] and failed["reason"] in Path(failed["log"]).read_text()
    assert all(jobs[j]["status"] == "failed" and jobs[j]["reason"].startswith("not run")
               for j in brain[1:])
    assert record["runs"][0]["counts"] == {"done": 4, "skipped": 0, "failed": 3,
                                           "interrupted": 0}
    assert brain[0] in first.output and failed["log"].split("/")[-1] in first.output

    # the record holds what the tables hold, and says how each job ran
    probe = jobs["probe/breastus_phantom"]
    md, _ = probe["outputs"]["tables"]["word"]
    in_table = {r.model: r.test["macro_f1"] for r in read_table(Path(md).with_suffix(".json"))}
    assert {r["model"]: r["macro_f1"] for r in probe["outputs"]["results"]
            if r["label"] == "word"} == pytest.approx(in_table)
    assert probe["options"]["config"]["n_bootstrap"] == 50 and "label='word'" in probe["call"]
    assert probe["inputs"][tiny_model]["cache_key"] == jobs[bus[0]]["outputs"]["cache_key"]
    maps = jobs[bus[3]]["outputs"]["maps"][0]
    assert set(maps["by_probe"]) == {"class", "word"} and Path(maps["figure"]).is_file()
    assert jobs[bus[0]]["outputs"]["img_per_s"] > 0

    # the root fixed: the dry run lists the missing jobs with the time the measured rate gives
    (broken / "notes.txt").unlink()
    make_phantom("brainmr", broken, n=60, seed=0, progress=False)
    plan = plan_study(study)
    assert [p.job.id for p in plan.to_run] == brain
    assert plan.to_run[0].estimate_s == pytest.approx(60 / jobs[bus[0]]["outputs"]["img_per_s"])
    assert "time left about" in plan.estimate()

    cache = Path(jobs[bus[0]]["outputs"]["cache"])
    before = cache.stat().st_mtime_ns
    second = run_study(study, progress=False)
    assert second.ok
    record = _record(out)
    assert [record["jobs"][j]["run"] for j in bus + brain] == [0, 0, 0, 0, 1, 1, 1]
    assert {s.job.id: s.status for s in second.states if s.job.id in bus} == dict.fromkeys(
        bus, "skipped") and cache.stat().st_mtime_ns == before
    class_md = record["jobs"]["probe/brainmr"]["outputs"]["tables"]["class"][0]
    assert {r.dataset for r in read_table(Path(class_md).with_suffix(".json"))} == {
        "breastus_phantom", "brainmr"}
    assert plan_study(study).estimate() == "Nothing to run: every job is done."

    # another probe setting for one dataset: its probe and the RISE of its probes are stale
    study.write_text(study.read_text().replace("stages: {umap: false}",
                                               "stages: {umap: false, probe: {seed: 1}}"))
    assert [p.job.id for p in plan_study(study).to_run] == brain[1:]


@pytest.mark.slow
def test_an_interrupted_study_continues_where_it_stopped(shared_phantom, tiny_model, tmp_path):
    study = _one_dataset_study(tmp_path, tiny_model, shared_phantom,
                               "batch_size: 1, num_workers: 0", "")
    out = tmp_path / "out"
    with open(tmp_path / "first.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vlmprobe", "study", str(study)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 300
        while not list(out.glob("caches/*/.*.work/chunk-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # what a cluster's time limit or `kill` sends
        assert proc.wait(120) == 130, (tmp_path / "first.err").read_text()
    record = _record(out)
    job = f"extract/{tiny_model}/breastus_phantom"
    assert record["runs"][0]["interrupted"] and record["jobs"][job]["status"] == "interrupted"
    chunks = len(list(out.glob("caches/*/.*.work/chunk-*")))
    assert 1 <= chunks < 60  # stopped mid-extraction, the chunks kept

    again = run_study(study, progress=False)
    assert again.ok and [s.status for s in again.states] == ["done", "done"]
    log = Path(_record(out)["jobs"][job]["log"]).read_text()
    assert f"Resuming: {chunks} of 60 chunks already done" in log
    assert not _record(out)["runs"][1]["interrupted"]


@pytest.mark.slow
def test_the_slurm_launcher_shards_an_extraction_over_tasks_through_submitit(
        shared_phantom, shared_cache, tiny_model, tmp_path):
    """submitit's local executor: the slurm code path (one job per extraction, one task per
    shard, TorchDistributedEnvironment's rank variables) on one machine."""
    study = _one_dataset_study(tmp_path, tiny_model, shared_phantom,
                               "num_workers: 0, device: cpu",
                               "launcher:\n  name: slurm\n  cluster: local\n  resources: "
                               "{all: {timeout_min: 20}, extract: {tasks_per_node: 2}}\n")
    out = tmp_path / "out"
    run = run_study(study, progress=False)
    assert run.ok, [(s.job.id, s.reason, s.log) for s in run.states]
    extract = _record(out)["jobs"][f"extract/{tiny_model}/breastus_phantom"]
    cache = read_cache(extract["outputs"]["cache"])
    assert sorted(cache.attrs["merged_from"]) == [f"{tiny_model}.h5.shard-{i}-of-2"
                                                  for i in range(2)]
    single = read_cache(shared_cache)  # the same extraction in one process
    assert cache.relpaths == single.relpaths and np.array_equal(cache.embeddings,
                                                                single.embeddings)
    assert Path(extract["log"]).is_file() and Path(extract["log"].replace(".log", ".rank1.log")
                                                  ).is_file()
    assert extract["launcher_id"].isdigit() and (out / "submitit").is_dir()
    probe = _record(out)["jobs"]["probe/breastus_phantom"]
    assert probe["status"] == "done" and Path(probe["outputs"]["tables"]["class"][0]).is_file()
    pickles = [p for p in out.rglob("*.pkl") if "submitit" not in p.relative_to(out).parts]
    assert not pickles  # submitit's job files are its own; vlmprobe's outputs stay pickle-free
    assert json.loads((out / "run_record.json").read_text())["resolved"]["launcher"]["name"] \
        == "slurm"
