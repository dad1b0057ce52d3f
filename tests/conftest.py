"""Shared fixtures: a tiny BUSI-layout dataset, the fast registry entries, a lite0 encoder loaded
once per session, and one breastus phantom with its 64-px cache built once per test run."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import MODEL, TINY_REGISTRY

#: session fixtures of one test folder that another shares (imported twice, a fixture would run twice)
pytest_plugins = ["report.report_study"]

CLASSES = ("normal", "benign", "malignant")
PHANTOM = "breastus_phantom"


def write_tiny_busi(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Class-dependent brightness, so a probe has something to find; masks beside images."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = (rng.random((90, 120)) * 60 + ci * 60).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{c} ({i + 1}).png")
            Image.fromarray((a > 120).astype(np.uint8) * 255).save(root / c / f"{c} ({i + 1})_mask.png")
    return root


@pytest.fixture
def tiny_busi(tmp_path) -> Path:
    return write_tiny_busi(tmp_path / "busi")


def write_tiny_registry(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny_registry.yaml"
    path.write_text(TINY_REGISTRY)
    return path


def not_a_dataset(folder: Path, name: str = "brainmr") -> Path:
    """A dataset root that holds no images, so a study's jobs on it fail as a user's would."""
    root = folder / name
    root.mkdir(parents=True)
    (root / "notes.txt").write_text(f"not a {name} folder")
    return root


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """Registers the fast entries of tiny_models.py (``$VLMPROBE_REGISTRY``, inherited by
    subprocesses) and yields ``lite0_random_64``."""
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(write_tiny_registry(tmp_path)))
    # One intra-op thread: on a shared, oversubscribed CPU OpenMP's spinning threads make every
    # forward seconds slower; the tests check bytes and behaviour, not speed.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MODEL
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def lite0():
    from vlmprobe.encoders import load_encoder

    return load_encoder("efficientnet_lite0", "cpu")


@pytest.fixture(scope="session")
def shared_phantom(tmp_path_factory) -> Path:
    """The breastus phantom plumbing tests share (60 images, seed 0), written once per test run.
    Read-only: a test that changes files copies it first."""
    from vlmprobe.data.phantoms import make_phantom

    return make_phantom("breastus", tmp_path_factory.mktemp("shared") / PHANTOM, n=60, seed=0,
                        progress=False)


@pytest.fixture(scope="session")
def shared_cache(shared_phantom, tmp_path_factory) -> Path:
    """``shared_phantom`` embedded once per test run by ``lite0_random_64`` (64 px, seeded random
    weights). Read-only: stages write beside their cache, so tests use :func:`phantom_cache`."""
    from vlmprobe.extraction import extract

    folder = tmp_path_factory.mktemp("shared_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMPROBE_REGISTRY", str(write_tiny_registry(folder)))
        return extract(MODEL, PHANTOM, root=shared_phantom, out=folder / "caches", device="cpu",
                       num_workers=0, progress=False).path


@pytest.fixture
def phantom_cache(shared_phantom, shared_cache, tiny_model, tmp_path) -> tuple[Path, Path]:
    """(phantom root, a private copy of the shared cache under ``tmp_path``), with the fast
    entries registered so stages that load the encoder (RISE) find it."""
    copy = tmp_path / "caches" / PHANTOM / shared_cache.name
    copy.parent.mkdir(parents=True)
    shutil.copy2(shared_cache, copy)
    return shared_phantom, copy
