"""On-disk layouts: a loader turns a dataset root into a list of :class:`Sample` (relative path,
class index, metadata). Images are decoded only when extraction asks, so listing 30k files stays
cheap. Loaders register by layout name (``datasets.yaml``'s ``layout``).
"""
from __future__ import annotations

import csv
import glob
import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from ..registry import DatasetEntry
from ..validation import VlmprobeError
from .decode import MEMBER_SEP, sample_file, whole_volume_file
from .own import is_image_file

MEDMNIST_SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class Sample:
    relpath: str  # posix path relative to the dataset root
    label: int
    metadata: dict[str, str] = field(default_factory=dict)


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


def _safe_relpath(value: str, where: str, root: Path) -> str:
    """A manifest path as a posix relpath inside ``root``; ``../`` or absolute paths are refused."""
    rel = PurePosixPath(value.replace("\\", "/"))
    inside = (root / rel).resolve().is_relative_to(root.resolve())  # symlinks included
    if rel.is_absolute() or ".." in rel.parts or not inside:
        raise VlmprobeError(f"{where}: path {value!r} points outside the dataset root {root}; "
                            "manifest paths must be relative to the root, without '..'.")
    return rel.as_posix()


def _images_in(folder: Path, keep: Callable[[Path], bool] = lambda p: True) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and p.is_file() and keep(p))


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


def _csv_text(path: Path) -> str:
    """A CSV file's text: UTF-8 (a byte-order mark dropped, as Excel writes one), else Latin-1,
    the other encoding spreadsheets save manifests in (every byte decodes, so never an error)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_manifest(path: Path) -> list[dict[str, str]]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        return list(csv.DictReader(io.StringIO(_csv_text(path), newline=""), delimiter=delimiter))
    except (OSError, csv.Error) as e:
        raise VlmprobeError(f"Manifest {path} is unreadable ({e}); fix it or point --root at "
                            "another copy.") from None


def _manifest_path(entry: DatasetEntry, root: Path) -> Path:
    if not entry.manifest or not (root / entry.manifest).is_file():
        raise VlmprobeError(f"{root / (entry.manifest or '?')} is missing. Expected layout for "
                            f"{entry.name}: {entry.layout_help}")
    return root / entry.manifest


def manifest_classes(entry: DatasetEntry, root: Path) -> list[str]:
    """HiCervix lists its classes only in its manifest: take them from the label column, sorted."""
    path = _manifest_path(entry, root)
    return sorted({row.get(entry.label_column) or "" for row in _read_manifest(path)} - {""})


@_loader("csv")
def _load_csv(entry: DatasetEntry, root: Path) -> list[Sample]:
    """A CSV/TSV manifest: one row per image with a path, a label (named or one-hot), a group."""
    path = _manifest_path(entry, root)
    rows = _read_manifest(path)
    if not (entry.label_column or entry.onehot_columns):
        raise VlmprobeError(f"datasets.yaml entry {entry.name!r}: a csv layout needs label_column "
                            "or onehot_columns.")
    label_cols = entry.onehot_columns or [entry.label_column]
    # The group column may come from metadata_csv instead (ISIC's lesion_id).
    group = entry.group_column if entry.group_column and (
        not entry.metadata_csv or (rows and entry.group_column in rows[0])) else None
    used = [entry.path_column, *label_cols] + ([group] if group else [])
    absent = [c for c in used + (entry.metadata_columns or []) if rows and c not in rows[0]]
    if absent:
        raise VlmprobeError(f"{path}: columns {absent} not found (it has {list(rows[0])}); fix "
                            f"the manifest or the {entry.name!r} entry in datasets.yaml.")
    index = {c: i for i, c in enumerate(entry.classes)}
    samples, row_of = [], {}
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{path} row {n}"
        if None in row or None in row.values():
            raise VlmprobeError(f"{where} does not have the header's {len(row) - (None in row)} "
                                "fields; fix that row.")
        if entry.onehot_columns:
            hot = [i for i, c in enumerate(entry.onehot_columns) if row[c].strip() in ("1", "1.0")]
            if len(hot) != 1:
                raise VlmprobeError(f"{where}: expected exactly one 1 among the one-hot columns "
                                    f"{entry.onehot_columns}, got {len(hot)}; fix that row.")
            label = hot[0]
        elif row[entry.label_column] in index:
            label = index[row[entry.label_column]]
        else:
            raise VlmprobeError(f"{where}: unknown label {row[entry.label_column]!r} in column "
                                f"{entry.label_column!r}; known classes: {entry.classes}. Fix the "
                                "row or the entry's classes in datasets.yaml.")
        try:
            value = entry.path_format.format(row[entry.path_column], **row)
        except KeyError as e:
            raise VlmprobeError(f"path_format {entry.path_format!r} of {entry.name!r} names a "
                                f"column {e} that {path} lacks.") from None
        rel = _safe_relpath(value, where, root)
        if rel in row_of:
            raise VlmprobeError(f"{where} names {rel!r} again (first on row {row_of[rel]}): an "
                                "image listed twice would be counted twice and could land on "
                                "both sides of a split. Keep one row per image.")
        row_of[rel] = n
        meta = {k: v for k, v in row.items() if k not in used} if entry.metadata_columns is None \
            else {k: row[k] for k in entry.metadata_columns}
        if group:
            meta["group"] = row[group]
        if entry.metadata_key == entry.path_column:  # the key metadata_csv is joined on
            meta[entry.path_column] = row[entry.path_column]
        samples.append(Sample(rel, label, meta))
    missing = [(n, rel) for rel, n in row_of.items() if not (root / rel).exists()]
    if missing:
        more = f" (and {len(missing) - 3} more rows)" if len(missing) > 3 else ""
        raise VlmprobeError(f"{path}: {len(missing)} row(s) name files that do not exist under "
                            f"{root}: " + "; ".join(f"row {n}: {r}" for n, r in missing[:3]) + more
                            + ". Fix the manifest, or point the root (--root) at the folder its "
                            "paths are relative to.")
    return samples


@_loader("medmnist")
def _load_medmnist(entry: DatasetEntry, root: Path) -> list[Sample]:
    """MedMNIST ``<name>[_SIZE].npz``: only the ``entry.splits`` the paper's N comes from."""
    path = _medmnist_file(entry, root)
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = {s: npz[f"{s}_labels"].reshape(len(npz[f"{s}_labels"]), -1)[:, 0]
                      for s in entry.splits if f"{s}_labels" in npz.files}
            images = {s: (npz[f"{s}_images"].shape, npz[f"{s}_images"].dtype)
                      for s in labels if f"{s}_images" in npz.files}
    except Exception as e:  # noqa: BLE001 — numpy fails many ways on foreign bytes; pickles too
        raise VlmprobeError(f"{path} is not a readable MedMNIST npz ({e}); replace it with the "
                            "release file.") from None
    if len(labels) < len(entry.splits):
        raise VlmprobeError(f"{path} lacks {[s for s in entry.splits if s not in labels]}_labels; "
                            "is it a MedMNIST release file?")
    for split, y in labels.items():
        shape, dtype = images.get(split, ((), None))
        if dtype != np.uint8 or len(shape) not in (3, 4) or shape[0] != len(y) or (
                len(shape) == 4 and shape[3] not in (1, 3)):
            found = "missing" if dtype is None else f"{dtype} {shape}"
            raise VlmprobeError(f"{path}: {split}_images is {found}; a MedMNIST file holds uint8 "
                                f"images [{len(y)}, H, W] or [{len(y)}, H, W, 3], one per "
                                f"{split}_labels row. Replace it with the release file.")
        if not np.issubdtype(y.dtype, np.integer):
            raise VlmprobeError(f"{path}: {split}_labels is {y.dtype}; MedMNIST labels are "
                                "integers. Replace it with the release file.")
        if y.size and not 0 <= y.min() <= y.max() < len(entry.classes):
            raise VlmprobeError(f"{path}: {split}_labels holds values outside "
                                f"0..{len(entry.classes) - 1} (classes {entry.classes}); is it "
                                f"the file for {entry.name}?")
    return [Sample(f"{path.name}{MEMBER_SEP}{split}_images/{k}", int(label))
            for split, y in labels.items() for k, label in enumerate(y)]


def _medmnist_file(entry: DatasetEntry, root: Path) -> Path:
    stem = entry.phantom_of or entry.name
    names = [f"{stem}_{entry.size}.npz"] + ([f"{stem}.npz"] if entry.size == 28 else [])
    for name in names:
        if (root / name).is_file():
            return root / name
    raise VlmprobeError(f"{root} has no {' or '.join(names)} (size {entry.size}). Expected layout "
                        f"for {entry.name}: {entry.layout_help}; or choose another size.")


def _metadata_row(rows: dict, sample: Sample, key: str) -> dict:
    """The CSV row of ``sample``: by relpath (or, for a whole volume, its file or series folder),
    else by the sample's own ``key`` column."""
    if key != "path":
        return rows.get(sample.metadata.get(key, ""), {})
    return rows.get(sample.relpath) or rows.get(whole_volume_file(sample.relpath), {})


def join_metadata(samples: list[Sample], csv_path: Path, key: str = "path") -> list[Sample]:
    """Add the columns of a CSV to each sample, matched on ``key``: the relpath for ``path``,
    else the sample's manifest column of that name (ISIC's ``image`` id)."""
    try:
        rows = {row.pop(key): row for row in csv.DictReader(io.StringIO(_csv_text(csv_path),
                                                                         newline=""))}
    except (OSError, KeyError, csv.Error) as e:
        raise VlmprobeError(f"Metadata file {csv_path} is unreadable or has no {key!r} column "
                            f"({e!r}); fix or remove it.") from None
    return [replace(s, metadata={**s.metadata, **{
        k: v for k, v in _metadata_row(rows, s, key).items() if k != "label"}})
            for s in samples]


def assign_groups(entry: DatasetEntry, samples: list[Sample], joined: bool) -> list[Sample]:
    """Metadata "group" (patient id) from a joined column or the file name, where the entry says.

    An empty id means "no known group": splits treat such an image as a group of its own. A
    group column of an optional metadata_csv that is absent (``joined`` False) gives no groups.
    """
    if entry.group_column and not any("group" in s.metadata for s in samples):
        if entry.metadata_csv and not joined:
            return samples
        if not any(entry.group_column in s.metadata for s in samples):
            raise VlmprobeError(f"No image of {entry.name!r} has the group column "
                                f"{entry.group_column!r} (manifest or {entry.metadata_csv}); fix "
                                "the files or the entry's group_column.")
        return [replace(s, metadata={**s.metadata, "group": s.metadata.get(entry.group_column, "")})
                for s in samples]
    if entry.group_pattern:
        pattern, out = re.compile(entry.group_pattern), []
        for s in samples:
            m = pattern.search(PurePosixPath(sample_file(s.relpath)).name)
            if not m:
                raise VlmprobeError(f"{s.relpath}: its name does not match {entry.name!r}'s "
                                    f"group_pattern {entry.group_pattern!r}, so its patient is "
                                    "unknown. Rename the file or fix the pattern in datasets.yaml.")
            out.append(replace(s, metadata={**s.metadata, "group": m.group(1)}))
        return out
    return samples
