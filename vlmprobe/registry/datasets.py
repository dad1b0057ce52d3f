"""The dataset registry: ``datasets.yaml`` entries, one per dataset: what it is, where to get
it, the on-disk layout its loader reads, and the choices (size, DICOM window, intensity, label
level, class subset) a run may override. Loaders and decoding live in :mod:`vlmprobe.data`.

Users add datasets in their own files (``$VLMPROBE_DATASETS``, ``:``-separated, or
``--datasets FILE``), as models in ``$VLMPROBE_REGISTRY``: a key defined twice is an error naming
both files, unless the user entry says ``replaces: builtin``.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path

from ..validation import (VlmprobeError, build_entry, merge_registry_files, read_yaml_entries,
                          unknown_key_error)
from .models import check_field_types

#: the built-in registry, shipped inside the package
DATASETS_FILE = Path(str(files(__package__) / "datasets.yaml"))
DATASETS_ENV = "VLMPROBE_DATASETS"
#: what image files the imagefolder and csv layouts read (volumes: see ``vlmprobe.data.volumes``)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")

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
    # Volumes (vlmprobe.data.volumes): NIfTI files, and with dicom_series each folder of .dcm
    # files as one series, are read as axial slices after RAS orientation, every slice_step-th.
    slice_step: int = 1
    dicom_series: bool = False
    # "slices" (the default: axial 2-D samples) or "whole": each volume one sample, read by
    # vlmprobe.data.volumes.load_volume for a 3-D encoder (one embedding per volume)
    volume: str = "slices"
    #: where the images are when no --root is given (an own dataset's folder; a user entry may
    #: set it); else $VLMPROBE_DATA/<name>
    root: str | None = None
    #: "builtin": this user entry takes the place of the shipped entry of the same key
    replaces: str | None = None
    #: the registry file that defined the entry, or the folder / manifest an own dataset names
    defined_in: str = ""
    # Metadata columns that record how an image was made rather than what it shows (burnt-in
    # text, site, scanner, image quality; not ids or paths): the report's background-bias audit
    # probes each from the features against the shuffled-label floor.
    nuisance_columns: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """What ``vlmprobe datasets info`` prints, and a missing root's error repeats: what the
        dataset is, where to get it, and the exact folder structure its loader expects."""
        n = sum(self.expected_counts.values()) if self.expected_counts else self.expected_total
        classes = (f"{len(self.classes)}: {', '.join(self.classes)}" if self.classes else
                   f"read from {self.manifest} (column {self.label_column})")
        rows = [("dataset", self.name), ("name", self.paper_name), ("modality", self.modality),
                ("classes", classes), ("expected images", f"{n:,}" if n else "not recorded"),
                ("subset", self.subset), ("source (where to get it)", self.source or "not recorded"),
                ("licence", self.licence), ("layout", self.layout),
                ("groups (patients)", self.group_key or self.group_column or "none"),
                ("notes", self.notes), ("defined in", self.defined_in)]
        lines = [f"{k}: {v}" for k, v in rows if v]
        lines += ["expected folder structure:", *(f"  {line}" for line in self.structure())]
        return "\n".join(lines)

    def structure(self) -> list[str]:
        """The files and folders the loader reads, one line each (``<root>`` is the root)."""
        images = "image files (" + " ".join(IMAGE_SUFFIXES) + "), in any subfolder"
        if self.layout in ("imagefolder", "busi"):
            masks = ", each <name>.png with <name>_mask.png beside it" if self.layout == "busi" else ""
            lines = ["<root>/"] + [f"  {c}/   {images}{masks}" for c in self.classes or ["<class>"]]
        elif self.layout == "csv":
            labels = (f"one-hot columns {', '.join(self.onehot_columns)}" if self.onehot_columns
                      else f"label column {self.label_column!r}")
            group = f", group column {self.group_column!r}" if self.group_column else ""
            lines = ["<root>/", f"  {self.manifest}   path column {self.path_column!r}, {labels}"
                     f"{group}", f"  {self.path_format.replace('{}', f'<{self.path_column}>')}"
                     "   the image each row names"]
        elif self.layout == "medmnist":
            stem = self.phantom_of or self.name
            lines = ["<root>/", f"  {stem}_<size>.npz   (size 28: also {stem}.npz), arrays "
                     f"<split>_images and <split>_labels for splits {', '.join(self.splits)}"]
        else:
            lines = []
        if self.metadata_csv:
            lines.append(f"  {self.metadata_csv}   optional metadata, joined on {self.metadata_key!r}")
        return lines + [f"({self.layout_help})"]


def load_datasets_file(path: Path = DATASETS_FILE) -> dict[str, DatasetEntry]:
    entries = read_yaml_entries(path, "datasets")
    for name, raw in entries.items():
        check_field_types(DatasetEntry, path, name, raw)
    return {name: replace(build_entry(DatasetEntry, path, name, raw), defined_in=str(path))
            for name, raw in entries.items()}


def datasets_files(extra: list[Path] | tuple = ()) -> list[Path]:
    """The built-in registry, then ``$VLMPROBE_DATASETS`` files, then ``extra``."""
    env = [Path(p) for p in os.environ.get(DATASETS_ENV, "").split(os.pathsep) if p]
    return [DATASETS_FILE, *env, *map(Path, extra)]


def load_datasets(extra: list[Path] | tuple = ()) -> dict[str, DatasetEntry]:
    """Every dataset entry: built in, from ``$VLMPROBE_DATASETS`` and from ``extra`` files."""
    return merge_registry_files("dataset", [(p, load_datasets_file(p))
                                            for p in datasets_files(extra)])


def get_dataset_entry(name: str, datasets: list[Path] | tuple = ()) -> DatasetEntry:
    """The entry ``name``; ``datasets``: user files beside ``$VLMPROBE_DATASETS``."""
    entries = load_datasets(datasets)
    if name not in entries:
        if ":" in name:
            raise VlmprobeError(f"Unknown dataset {name!r}: an own dataset is imagefolder:DIR or "
                                "csv:MANIFEST.csv (see `vlmprobe datasets info --help`).")
        raise unknown_key_error("dataset", name, entries)
    return entries[name]


def list_datasets(pattern: str = "*", datasets: list[Path] | tuple = ()) -> list[str]:
    """The dataset keys matching ``pattern`` (fnmatch), sorted; ``datasets``: user files."""
    return sorted(fnmatch.filter(load_datasets(datasets), pattern))
