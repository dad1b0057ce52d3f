"""Fuzz target for vlmprobe's loaders (atheris): bytes -> an image file, a DICOM file, a MedMNIST
npz, a CSV manifest or a registry YAML file -> vlmprobe reads it. The contract under test: a
loader returns what it read or raises VlmprobeError naming the file; any other exception is a
finding. Run by hand, not in CI (README, "Guarantees"):

    pip install ".[fuzz,dicom]"
    mkdir -p fuzz-corpus && python fuzz/fuzz_loaders.py -atheris_runs=20000 fuzz-corpus/
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import numpy as np

    from vlmprobe.data import load_dataset, read_image
    from vlmprobe.validation import VlmprobeError, read_yaml_entries

SUFFIXES = (".png", ".jpg", ".tif", ".bmp", ".dcm", "")
FOLDER = Path(tempfile.mkdtemp(prefix="vlmprobe-fuzz-"))


def _image(data: bytes) -> None:
    suffix = SUFFIXES[data[0] % len(SUFFIXES)] if data else ".png"
    path = FOLDER / f"sample{suffix}"
    path.write_bytes(data[1:])
    image = read_image(path, intensity="float" if len(data) % 2 else "8bit")
    pixels = np.asarray(image)
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and np.isfinite(pixels).all(), pixels.shape


def _npz(data: bytes) -> None:
    root = FOLDER / "mnist"
    root.mkdir(exist_ok=True)
    (root / "pneumoniamnist.npz").write_bytes(data)
    ds = load_dataset("pneumoniamnist", root)
    if len(ds):
        ds.load_image(0)


def _manifest(data: bytes) -> None:
    root = FOLDER / "csv"
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_bytes(data)
    load_dataset("hicervix", root)


def _yaml(data: bytes) -> None:
    path = FOLDER / "registry.yaml"
    path.write_bytes(data)
    read_yaml_entries(path, "models")


TARGETS = (_image, _image, _image, _npz, _manifest, _yaml)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        TARGETS[data[0] % len(TARGETS)](data[1:])
    except VlmprobeError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
