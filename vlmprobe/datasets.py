"""Datasets: ``datasets.yaml`` entries, on-disk layouts (loaders), image decoding, fingerprints.

A loader turns a dataset root into a list of :class:`Sample` (relative path, class index,
metadata). Images are decoded only when extraction asks, so listing 30k files stays cheap.
"""
from __future__ import annotations

import csv
import glob
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .paths import data_root
from .validation import VlmprobeError, build_entry, check_dir, read_yaml_entries, unknown_key_error

DATASETS_FILE = Path(__file__).resolve().parent.parent / "datasets.yaml"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
#: How images become the 8-bit RGB the official transforms expect; recorded in every cache.
INTENSITY_PIPELINE = "pil-decode -> 16-bit scaled /257 -> 8-bit RGB (palette/RGBA/CMYK/L converted)"


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    paper_name: str
    modality: str
    classes: list[str]
    layout: str
    layout_help: str
    source: str = ""
    licence: str = "unknown"
    expected_counts: dict[str, int] = field(default_factory=dict)
    expected_total: int | None = None
    positive_class: str | None = None
    group_key: str | None = None
    metadata_csv: str | None = None
    phantom_of: str | None = None
    subset: str = ""
    notes: str = ""


@dataclass(frozen=True)
class Sample:
    relpath: str  # posix path relative to the dataset root
    label: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageDataset:
    """A dataset on disk: entry, root, samples and the class names labels index into."""

    entry: DatasetEntry
    root: Path
    samples: list[Sample]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def metadata_columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for s in self.samples:
            cols.update(dict.fromkeys(s.metadata))
        return list(cols)

    def path(self, i: int) -> Path:
        return self.root / self.samples[i].relpath


def load_datasets_file(path: Path = DATASETS_FILE) -> dict[str, DatasetEntry]:
    return {name: build_entry(DatasetEntry, path, name, raw)
            for name, raw in read_yaml_entries(path, "datasets").items()}


def get_dataset_entry(name: str) -> DatasetEntry:
    entries = load_datasets_file()
    if name not in entries:
        raise unknown_key_error("dataset", name, entries)
    return entries[name]


# -- loaders ---------------------------------------------------------------------------------
LOADERS: dict[str, Callable[[DatasetEntry, Path], list[Sample]]] = {}


def _loader(layout: str):
    def deco(fn):
        LOADERS[layout] = fn
        return fn
    return deco


def _class_dirs(entry: DatasetEntry, root: Path) -> list[tuple[int, Path]]:
    missing = [c for c in entry.classes if not (root / c).is_dir()]
    if len(missing) == len(entry.classes):
        raise VlmprobeError(f"{root} has none of the class folders {entry.classes}. "
                            f"Expected layout for {entry.name}: {entry.layout_help}")
    return [(i, root / c) for i, c in enumerate(entry.classes) if (root / c).is_dir()]


def _images_in(folder: Path, keep: Callable[[Path], bool] = lambda p: True) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and keep(p))


@_loader("imagefolder")
def _load_imagefolder(entry: DatasetEntry, root: Path) -> list[Sample]:
    return [Sample(p.relative_to(root).as_posix(), label)
            for label, folder in _class_dirs(entry, root) for p in _images_in(folder)]


def _is_busi_mask(p: Path) -> bool:
    return "_mask" in p.stem


@_loader("busi")
def _load_busi(entry: DatasetEntry, root: Path) -> list[Sample]:
    """BUSI: ``<class>/<name>.png`` with one or more ``<name>_mask[_k].png`` beside it."""
    samples = []
    for label, folder in _class_dirs(entry, root):
        for p in _images_in(folder, keep=lambda q: not _is_busi_mask(q)):
            masks = sorted(q.relative_to(root).as_posix()
                           for q in p.parent.glob(f"{glob.escape(p.stem)}_mask*{p.suffix}"))
            samples.append(Sample(p.relative_to(root).as_posix(), label,
                                  {"mask_paths": ";".join(masks)}))
    return samples


def _join_metadata(samples: list[Sample], csv_path: Path) -> list[Sample]:
    """Add the columns of a CSV keyed by ``path`` (relative to the root) to each sample."""
    try:
        with open(csv_path, newline="") as f:
            rows = {row.pop("path"): row for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error) as e:
        raise VlmprobeError(f"Metadata file {csv_path} is unreadable or has no 'path' column "
                            f"({e!r}); fix or remove it.") from None
    return [Sample(s.relpath, s.label, {**s.metadata, **{k: v for k, v in rows.get(s.relpath, {}).items()
                                                          if k != "label"}})
            for s in samples]


def load_dataset(name: str, root: str | Path | None = None) -> ImageDataset:
    """List a dataset's images and labels from ``root`` (or ``$VLMPROBE_DATA/<name>``)."""
    entry = get_dataset_entry(name)
    root = check_dir(data_root(name, root), f"Dataset root for {name!r}", entry.layout_help)
    if entry.layout not in LOADERS:
        raise VlmprobeError(
            f"Dataset {name!r} uses layout {entry.layout!r}, which this vlmprobe version cannot "
            f"read yet (supported: {', '.join(sorted(LOADERS))}).")
    samples = LOADERS[entry.layout](entry, root)
    if not samples:
        raise VlmprobeError(f"No images found under {root}. Expected layout for {name}: "
                            f"{entry.layout_help}")
    if entry.metadata_csv and (root / entry.metadata_csv).is_file():
        samples = _join_metadata(samples, root / entry.metadata_csv)
    elif entry.metadata_csv and entry.phantom_of:
        raise VlmprobeError(f"{root / entry.metadata_csv} is missing: a phantom root must hold the "
                            "manifest make-phantom wrote. Regenerate it (vlmprobe datasets "
                            "make-phantom).")
    return ImageDataset(entry, root.resolve(), samples, list(entry.classes))


# -- decoding and fingerprints ---------------------------------------------------------------
def read_image(path: Path) -> Image.Image:
    """Decode any supported file to 8-bit RGB (see :data:`INTENSITY_PIPELINE`)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8))
        return im.convert("RGB")


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fingerprint_files(root: Path, relpaths: list[str]) -> tuple[list[int], list[str], str]:
    """Sizes, content digests and the dataset fingerprint of ``relpaths``.

    No mtimes, so a copied dataset keeps its fingerprint; sorted, so listing order does not matter.
    """
    sizes = [(root / r).stat().st_size for r in relpaths]
    digests = [file_digest(root / r) for r in relpaths]
    h = hashlib.sha256()
    for r, s, d in sorted(zip(relpaths, sizes, digests)):
        h.update(f"{r}\t{s}\t{d}\n".encode())
    return sizes, digests, h.hexdigest()
