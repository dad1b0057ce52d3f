"""Shared fixtures: a tiny BUSI-layout dataset and a lite0 encoder loaded once per session."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("normal", "benign", "malignant")


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


@pytest.fixture(scope="session")
def lite0():
    from vlmprobe.encoders import load_encoder

    return load_encoder("efficientnet_lite0", "cpu")
