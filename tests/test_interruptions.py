"""Interruption anywhere: probe, umap and rise as real processes, killed (SIGKILL) or interrupted
(SIGINT, Ctrl-C) at a seeded point of their output sequence, then run again.

At the moment of the kill every output file present is whole (written beside, then renamed);
Ctrl-C prints where to resume (exit 130), not a traceback; the rerun completes and its outputs
equal an uninterrupted run's, provenance timestamps aside. Extraction has its own kill tests
(tests/extraction/test_extract_resume.py).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmprobe.cli import RESUME_HINT

pytestmark = pytest.mark.slow

STAGES = {  # small settings: each uninterrupted run takes 4-11 s here, mostly start-up
    "probe": ["--jobs", "1", "--bootstrap", "200"],
    "umap": ["--n-neighbors", "5,10", "--min-dist", "0.1", "--jobs", "1"],
    "rise": ["--images", "2", "--n-masks", "256", "--device", "cpu"],
}


def _command(stage: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "vlmprobe", stage, str(cache), *STAGES[stage]]


def _outputs(folder: Path) -> list[Path]:
    """Visible output files (a temporary ``.<name>.tmp-<pid>`` is hidden; caches are inputs)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".h5"
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _whole(path: Path) -> None:
    """Fails unless ``path`` is a complete file of its kind."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            [z[k] for k in z.files]
    elif suffix == ".png":
        with Image.open(path) as im:
            im.load()
    elif suffix in (".svg", ".html"):
        assert path.read_text().rstrip().endswith(("</svg>", "</html>")), path
    elif suffix == ".csv":
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows and len({len(r) for r in rows}) == 1, path


def _without_provenance(value):
    if isinstance(value, dict):
        return {k: _without_provenance(v) for k, v in value.items() if k != "provenance"}
    if isinstance(value, list):
        return [_without_provenance(v) for v in value]
    return value


def _content(path: Path, folder: Path):
    """What must be equal between two runs (``folder`` written as ROOT): arrays, tables, JSON
    without provenance; figures and pages (which embed their provenance) must be whole."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}  # NaN too
    if path.suffix in (".json", ".csv", ".md", ".tex"):
        text = path.read_text().replace(str(folder), "ROOT")
        return _without_provenance(json.loads(text)) if path.suffix == ".json" else text
    _whole(path)
    return None


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): _content(p, folder) for p in _outputs(folder)}


def _copy(cache: Path, folder: Path) -> Path:
    target = folder / cache.parent.name / cache.name
    target.parent.mkdir(parents=True)
    shutil.copy2(cache, target)
    return target


@pytest.fixture(scope="module")
def references(shared_cache, tmp_path_factory):
    """Each stage run once, uninterrupted, on its own copy of the shared cache."""
    from conftest import write_tiny_registry

    folder = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "VLMPROBE_REGISTRY": str(write_tiny_registry(folder))}
    refs = {}
    for stage in STAGES:
        cache = _copy(shared_cache, folder / stage)
        if stage == "rise":  # RISE explains a saved probe: the probe's outputs are its input
            subprocess.run(_command("probe", cache), env=env, check=True, capture_output=True)
        before = set(_outputs(cache.parent.parent))
        done = subprocess.run(_command(stage, cache), env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        refs[stage] = (_snapshot(cache.parent.parent),
                       len(set(_outputs(cache.parent.parent)) - before))
    return refs, env, folder


def _input(stage: str, shared_cache: Path, folder: Path, tmp_path: Path) -> Path:
    """A fresh copy of what ``stage`` reads: the cache (and for rise its saved probe)."""
    if stage != "rise":
        return _copy(shared_cache, tmp_path)
    shutil.copytree(folder / "rise", tmp_path, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n == "rise"])
    for path in _outputs(tmp_path):  # the probe's records name the folder it ran in
        if path.suffix in (".json", ".csv", ".md", ".tex"):
            path.write_text(path.read_text().replace(str(folder / "rise"), str(tmp_path)))
    return tmp_path / shared_cache.parent.name / shared_cache.name


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_stage_leaves_only_whole_files_and_its_rerun_equals_an_uninterrupted_run(
        stage, signum, references, shared_cache, tmp_path):
    refs, env, folder = references
    reference, n_new = refs[stage]
    cache = _input(stage, shared_cache, folder, tmp_path)
    before = len(_outputs(tmp_path))
    # the seeded point: after the k-th of the stage's new output files appears
    k = int(np.random.default_rng([list(STAGES).index(stage), signum]).integers(1, n_new - 1))
    p = subprocess.Popen(_command(stage, cache), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(_outputs(tmp_path)) < before + k:
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(p.pid, signum)
    _, err = p.communicate()
    if p.returncode not in (0, -signal.SIGKILL):  # finished before the signal landed: fine
        assert p.returncode == 130, err
        assert RESUME_HINT in err and "Traceback" not in err, err
    for path in _outputs(tmp_path):  # whatever exists now is whole
        _whole(path)
    done = subprocess.run(_command(stage, cache), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _snapshot(tmp_path) == reference


@pytest.mark.parametrize("stage", ["probe", "umap"])
def test_two_runs_at_once_on_the_same_outputs_leave_whole_files_equal_to_one_run(
        stage, references, shared_cache, tmp_path):
    """Each file is renamed into place whole, so two writers never interleave inside one."""
    refs, env, folder = references
    cache = _input(stage, shared_cache, folder, tmp_path)
    runs = [subprocess.Popen(_command(stage, cache), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in runs:
        assert p.wait() == 0, p.stderr.read()
    assert _snapshot(tmp_path) == refs[stage][0]
