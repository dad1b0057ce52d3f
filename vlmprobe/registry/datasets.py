"""The dataset registry: ``datasets.yaml`` entries, one per dataset: what it is, where to get
it, the on-disk layout its loader reads, and the choices (size, DICOM window, intensity, label
level, class subset) a run may override. Loaders and decoding live in :mod:`vlmprobe.data`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from ..validation import build_entry, read_yaml_entries, unknown_key_error
from .models import check_field_types

#: the built-in registry, shipped inside the package
DATASETS_FILE = Path(str(files(__package__) / "datasets.yaml"))

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
    group_key: str | None = None  # what the patient / group id is, in words
    group_pattern: str | None = None  # regex on the file name; its group 1 is the patient id
    metadata_csv: str | None = None
    metadata_key: str = "path"  # metadata_csv column matched to the relpath, or to a manifest column
    phantom_of: str | None = None
    subset: str = ""
    notes: str = ""
    # csv layout: which manifest, and which of its columns hold what.
    manifest: str | None = None  # CSV/TSV relative to the root (.tsv/.txt: tab-separated)
    path_column: str = "path"
    path_format: str = "{}"  # path column -> relpath ("train/{}.jpg"); other columns as "{col}"
    label_column: str | None = None  # class names in one column ...
    label_levels: list[str] | None = None  # label columns of a hierarchy, coarse to fine
    label_level: int | None = None  # chosen level (1-based); None: label_column
    onehot_columns: list[str] | None = None  # ... or one 0/1 column per class, in class order
    group_column: str | None = None  # patient id (manifest or metadata_csv), as metadata "group"
    metadata_columns: list[str] | None = None  # None: every other column
    # medmnist layout: the splits the paper's N comes from, and the image size (a recorded choice).
    splits: list[str] = field(default_factory=lambda: ["train"])
    size: int = 28
    # DICOM: "tags" (WindowCenter/Width, min-max where absent), "minmax", or "CENTER,WIDTH".
    dicom_window: str = "tags"
    # "8bit" (default) or "float" (:data:`INTENSITIES`); part of the cache's view and key.
    intensity: str = "8bit"
    # A subset of the classes (in the full list's order); None: all. Part of the label view.
    class_subset: list[str] | None = None


def load_datasets_file(path: Path = DATASETS_FILE) -> dict[str, DatasetEntry]:
    entries = read_yaml_entries(path, "datasets")
    for name, raw in entries.items():
        check_field_types(DatasetEntry, path, name, raw)
    return {name: build_entry(DatasetEntry, path, name, raw) for name, raw in entries.items()}


def get_dataset_entry(name: str) -> DatasetEntry:
    entries = load_datasets_file()
    if name not in entries:
        raise unknown_key_error("dataset", name, entries)
    return entries[name]


def list_datasets(pattern: str = "*") -> list[str]:
    """The dataset keys matching ``pattern`` (fnmatch), sorted."""
    return sorted(fnmatch.filter(load_datasets_file(), pattern))
