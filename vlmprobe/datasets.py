"""Datasets: ``datasets.yaml`` entries, on-disk layouts (loaders), image decoding, fingerprints.

A loader turns a dataset root into a list of :class:`Sample` (relative path, class index,
metadata). Images are decoded only when extraction asks, so listing 30k files stays cheap.
Not every image is a file: a MedMNIST sample is ``<file>.npz#<array key>/<index>``, so its relpath
names the file it lives in plus where inside it (:func:`sample_file`, :func:`read_sample`).
"""
from __future__ import annotations

import csv
import glob
import hashlib
import re
import warnings
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image

from .paths import data_root
from .validation import VlmprobeError, build_entry, check_dir, read_yaml_entries, unknown_key_error

DATASETS_FILE = Path(__file__).resolve().parent.parent / "datasets.yaml"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}
#: How image files become the 8-bit RGB the official transforms expect; recorded in every cache.
INTENSITY_PIPELINE = "pil-decode -> 16-bit scaled /257 -> 8-bit RGB (palette/RGBA/CMYK/L converted)"
NPZ_PIPELINE = "medmnist npz uint8 -> RGB"
#: The opt-in float path (``intensity="float"``): no rounding to 256 levels before the model.
FLOAT_PIPELINE = ("pil-decode -> 16-bit /65535, 8-bit /255 -> float32 RGB in [0, 1], no 8-bit "
                  "rounding (palette/RGBA/CMYK/L converted)")
NPZ_FLOAT_PIPELINE = "medmnist npz uint8 -> RGB -> float32 /255"
#: "8bit": every sample becomes 8-bit RGB before the official transform (the default, what the
#: transform-equality tests check); "float": float32 RGB in [0, 1] for the float transform.
INTENSITIES = ("8bit", "float")
MEDMNIST_SIZES = (28, 64, 128, 224)
MEMBER_SEP = "#"  # "<file>.npz#train_images/17": the file, then the array key and index inside it


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

    def load_image(self, i: int) -> Image.Image | np.ndarray:
        """Sample ``i`` as 8-bit RGB (float32 [H, W, 3] for ``intensity="float"``), whether it is
        a file or a slot inside one (npz)."""
        return read_sample(self.root, self.samples[i].relpath, self.entry.dicom_window,
                           self.entry.intensity)

    @property
    def label_view(self) -> str:
        """Which labels this listing carries beyond the entry's default: level and class subset."""
        parts = ([f"level{self.entry.label_level}"] if self.entry.label_level else []) + \
            ([f"classes={'+'.join(self.entry.class_subset)}"] if self.entry.class_subset else [])
        return ";".join(parts)

    @property
    def cache_view(self) -> str:
        """The label view plus non-default pixel choices ("float"; a DICOM window other than the
        tags', e.g. "window=minmax"): named in the cache file (:func:`vlmprobe.paths.cache_path`),
        so caches of one dataset under two intensity pipelines sit side by side. Unlike the label
        view it leaves the fingerprint alone: both share one split, so probes compare them."""
        window = (self.entry.dicom_window != "tags"
                  and any(_kind(s.relpath) == "dicom" for s in self.samples))
        parts = ([self.label_view] if self.label_view else []) + \
            ([f"window={self.entry.dicom_window}"] if window else []) + \
            (["float"] if self.entry.intensity == "float" else [])
        return ";".join(parts)

    def fingerprint(self) -> tuple[list[int], list[str], str]:
        """:func:`fingerprint_files` of the samples; a non-default label view is part of it, so
        caches and splits of another level or class subset never pass for this one's."""
        labels = [self.class_names[s.label] for s in self.samples] if self.label_view else None
        return fingerprint_files(self.root, [s.relpath for s in self.samples], labels)

    @property
    def intensity_pipeline(self) -> str:
        """How this dataset's pixels become 8-bit (or float) RGB; part of every cache key.

        Only the decoders its samples use are named, so a PNG-only dataset keeps the
        key it always had.
        """
        kinds = {_kind(s.relpath) for s in self.samples}
        as_float = self.entry.intensity == "float"
        parts = {"raster": FLOAT_PIPELINE if as_float else INTENSITY_PIPELINE,
                 "npz": NPZ_FLOAT_PIPELINE if as_float else NPZ_PIPELINE,
                 "dicom": dicom_pipeline(self.entry.dicom_window, self.entry.intensity)}
        return " + ".join(v for k, v in parts.items() if k in kinds)


def load_datasets_file(path: Path = DATASETS_FILE) -> dict[str, DatasetEntry]:
    return {name: build_entry(DatasetEntry, path, name, raw)
            for name, raw in read_yaml_entries(path, "datasets").items()}


def dataset_options(label_level: int | None = None, classes: str | list[str] | None = None,
                    size: int | None = None, dicom_window: str | None = None,
                    intensity: str | None = None) -> dict:
    """:func:`load_dataset` options from command-line values (None: the entry's default).

    ``classes`` may be a comma list ("a,b"); these choices define what a cache and its split
    cover, so each is recorded in the cache's dataset entry.
    """
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    opts = {"label_level": label_level, "class_subset": classes, "size": size,
            "dicom_window": dicom_window, "intensity": intensity}
    return {k: v for k, v in opts.items() if v is not None}


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


def _safe_relpath(value: str, where: str, root: Path) -> str:
    """A manifest path as a posix relpath inside ``root``; ``../`` or absolute paths are refused."""
    rel = PurePosixPath(value.replace("\\", "/"))
    inside = (root / rel).resolve().is_relative_to(root.resolve())  # symlinks included
    if rel.is_absolute() or ".." in rel.parts or not inside:
        raise VlmprobeError(f"{where}: path {value!r} points outside the dataset root {root}; "
                            "manifest paths must be relative to the root, without '..'.")
    return rel.as_posix()


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


def _read_manifest(path: Path) -> list[dict[str, str]]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter=delimiter))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise VlmprobeError(f"Manifest {path} is unreadable ({e}); fix it or point --root at "
                            "another copy.") from None


def _manifest_path(entry: DatasetEntry, root: Path) -> Path:
    if not entry.manifest or not (root / entry.manifest).is_file():
        raise VlmprobeError(f"{root / (entry.manifest or '?')} is missing. Expected layout for "
                            f"{entry.name}: {entry.layout_help}")
    return root / entry.manifest


def _manifest_classes(entry: DatasetEntry, root: Path) -> list[str]:
    """HiCervix lists its classes only in its manifest: take them from the label column, sorted."""
    path = _manifest_path(entry, root)
    return sorted({row.get(entry.label_column, "") for row in _read_manifest(path)} - {""})


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
    samples = []
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
        meta = {k: v for k, v in row.items() if k not in used} if entry.metadata_columns is None \
            else {k: row[k] for k in entry.metadata_columns}
        if group:
            meta["group"] = row[group]
        if entry.metadata_key == entry.path_column:  # the key metadata_csv is joined on
            meta[entry.path_column] = row[entry.path_column]
        samples.append(Sample(rel, label, meta))
    return samples


@_loader("medmnist")
def _load_medmnist(entry: DatasetEntry, root: Path) -> list[Sample]:
    """MedMNIST ``<name>[_SIZE].npz``: only the ``entry.splits`` the paper's N comes from."""
    path = _medmnist_file(entry, root)
    with np.load(path) as npz:
        labels = {s: npz[f"{s}_labels"].reshape(len(npz[f"{s}_labels"]), -1)[:, 0]
                  for s in entry.splits if f"{s}_labels" in npz.files}
    if len(labels) < len(entry.splits):
        raise VlmprobeError(f"{path} lacks {[s for s in entry.splits if s not in labels]}_labels; "
                            "is it a MedMNIST release file?")
    for split, y in labels.items():
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


def _join_metadata(samples: list[Sample], csv_path: Path, key: str = "path") -> list[Sample]:
    """Add the columns of a CSV to each sample, matched on ``key``: the relpath for ``path``,
    else the sample's manifest column of that name (ISIC's ``image`` id)."""
    try:
        with open(csv_path, newline="") as f:
            rows = {row.pop(key): row for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error) as e:
        raise VlmprobeError(f"Metadata file {csv_path} is unreadable or has no {key!r} column "
                            f"({e!r}); fix or remove it.") from None
    return [replace(s, metadata={**s.metadata, **{
        k: v for k, v in rows.get(s.relpath if key == "path" else s.metadata.get(key, ""),
                                  {}).items() if k != "label"}})
            for s in samples]


def _assign_groups(entry: DatasetEntry, samples: list[Sample], joined: bool) -> list[Sample]:
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


def _label_level(entry: DatasetEntry) -> DatasetEntry:
    """The entry reading labels from the chosen level of its hierarchy (classes from the CSV)."""
    if entry.label_level is None:
        return entry
    levels = entry.label_levels or []
    if not 1 <= entry.label_level <= len(levels):
        raise VlmprobeError(f"label_level {entry.label_level} is not available for {entry.name!r}"
                            + (f"; choose 1..{len(levels)} ({levels})." if levels else
                               ": it has no label hierarchy."))
    return replace(entry, label_column=levels[entry.label_level - 1], classes=[],
                   expected_counts={})


def _select_classes(entry: DatasetEntry, samples: list[Sample]) -> tuple[DatasetEntry, list[Sample]]:
    """Only the samples of ``entry.class_subset``, relabelled 0..k-1 in the full list's order."""
    if entry.class_subset is None:
        return entry, samples
    unknown = [c for c in entry.class_subset if c not in entry.classes]
    if unknown or not entry.class_subset:
        raise VlmprobeError(f"classes {unknown or '[]'} are not classes of {entry.name!r}; choose "
                            f"among {entry.classes}.")
    keep = [c for c in entry.classes if c in entry.class_subset]
    new = {entry.classes.index(c): k for k, c in enumerate(keep)}
    return (replace(entry, class_subset=keep),
            [replace(s, label=new[s.label]) for s in samples if s.label in new])


def load_dataset(name: str, root: str | Path | None = None, **options) -> ImageDataset:
    """List a dataset's images and labels from ``root`` (or ``$VLMPROBE_DATA/<name>``).

    ``options`` override entry fields for this run (e.g. ``size=224``, ``dicom_window="minmax"``);
    the entry as used is what every cache records.
    """
    entry = get_dataset_entry(name)
    bad = set(options) - {f.name for f in fields(DatasetEntry)}
    if bad:
        raise VlmprobeError(f"Unknown dataset option(s) {sorted(bad)}; options are entry fields "
                            f"such as size, dicom_window, splits.")
    entry = _label_level(replace(entry, **options))
    fixed_window(entry.dicom_window)  # a typo fails here, not once per image
    if entry.intensity not in INTENSITIES:
        raise VlmprobeError(f"intensity {entry.intensity!r}: choose one of "
                            f"{', '.join(INTENSITIES)} (float: no 8-bit rounding before the "
                            "model's transform).")
    if entry.layout == "medmnist" and entry.size not in MEDMNIST_SIZES:
        raise VlmprobeError(f"size {entry.size} is not a MedMNIST size; choose one of "
                            f"{MEDMNIST_SIZES}.")
    root = check_dir(data_root(name, root), f"Dataset root for {name!r}", entry.layout_help)
    if entry.layout not in LOADERS:
        raise VlmprobeError(
            f"Dataset {name!r} uses layout {entry.layout!r}, which this vlmprobe version cannot "
            f"read yet (supported: {', '.join(sorted(LOADERS))}).")
    if entry.layout == "csv" and not entry.classes:
        entry = replace(entry, classes=_manifest_classes(entry, root))
    samples = LOADERS[entry.layout](entry, root)
    if not samples:
        raise VlmprobeError(f"No images found under {root}. Expected layout for {name}: "
                            f"{entry.layout_help}")
    joined = bool(entry.metadata_csv) and (root / entry.metadata_csv).is_file()
    if joined:
        samples = _join_metadata(samples, root / entry.metadata_csv, entry.metadata_key)
    elif entry.metadata_csv and entry.phantom_of:
        raise VlmprobeError(f"{root / entry.metadata_csv} is missing: a phantom root must hold the "
                            "manifest make-phantom wrote. Regenerate it (vlmprobe datasets "
                            "make-phantom).")
    truth = root / "manifest.csv"  # a phantom's per-image truth (vlmprobe.phantom), any layout
    if (root / "phantom.json").is_file() and truth.is_file() and entry.metadata_csv != truth.name:
        samples = _join_metadata(samples, truth)
    samples = _assign_groups(entry, samples, joined)
    entry, samples = _select_classes(entry, samples)
    if not samples:
        raise VlmprobeError(f"No images of classes {entry.class_subset} under {root}.")
    return ImageDataset(entry, root.resolve(), samples, list(entry.class_subset or entry.classes))


# -- decoding and fingerprints ---------------------------------------------------------------
def sample_file(relpath: str) -> str:
    """The file a sample lives in: itself, or the npz it is a slot of."""
    return relpath.split(MEMBER_SEP, 1)[0]


def _kind(relpath: str) -> str:
    suffix = Path(sample_file(relpath)).suffix.lower()
    return {".npz": "npz", ".dcm": "dicom"}.get(suffix, "raster")


def read_sample(root: Path, relpath: str, dicom_window: str = "tags",
                intensity: str = "8bit") -> Image.Image | np.ndarray:
    """Decode one sample (file, DICOM file or npz slot) to 8-bit RGB, or for
    ``intensity="float"`` to float32 [H, W, 3] in [0, 1]."""
    if MEMBER_SEP not in relpath:
        return read_image(root / relpath, dicom_window, intensity=intensity)
    file, member = relpath.split(MEMBER_SEP, 1)
    key, index = member.rsplit("/", 1)
    return _as_intensity(Image.fromarray(_npz_array(root / file, key)[int(index)]), intensity)


def _as_intensity(image: Image.Image | np.ndarray, intensity: str) -> Image.Image | np.ndarray:
    """8-bit RGB PIL for "8bit"; float32 [H, W, 3] in [0, 1] for "float". ``image``: a PIL image
    of 8-bit levels, or a float array in [0, 1] ([H, W] or [H, W, 3]) not yet rounded."""
    if isinstance(image, np.ndarray):
        if intensity == "float":
            return np.ascontiguousarray(np.broadcast_to(
                image[..., None] if image.ndim == 2 else image, (*image.shape[:2], 3)),
                dtype=np.float32)
        return Image.fromarray(np.round(image * 255).astype(np.uint8)).convert("RGB")
    image = image.convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255 if intensity == "float" else image


@lru_cache(maxsize=2)
def _npz_array(path: Path, key: str) -> np.ndarray:
    """One array of an npz, kept: reading a key decompresses all of it, so once per worker."""
    with np.load(path) as npz:
        return npz[key]


def read_image(path: Path, dicom_window: str = "tags", *, draft: int | None = None,
               intensity: str = "8bit") -> Image.Image | np.ndarray:
    """Decode an image file to 8-bit RGB (see :data:`INTENSITY_PIPELINE`, :func:`read_dicom`),
    or with ``intensity="float"`` to float32 [H, W, 3] in [0, 1] (:data:`FLOAT_PIPELINE`).

    PIL's decompression-bomb warning is an error here: a skipped image is reported, whereas
    decoding a 30-gigapixel file in every worker takes the machine down. ``draft`` (pixels,
    extract's ``--fast-decode``) lets a JPEG decode at the smallest DCT scale whose sides stay
    >= ``draft``; other formats ignore it.
    """
    if Path(path).suffix.lower() == ".dcm":
        return read_dicom(path, dicom_window, intensity)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if draft and im.format == "JPEG":
                    im.draft(im.mode, (draft, draft))
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64)
                    if intensity == "float":
                        return _as_intensity(np.clip(arr / 65535.0, 0, 1), intensity)
                    im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8))
                return _as_intensity(im, intensity)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VlmprobeError(f"{path}: {e} Skipped as a possible decompression bomb; if the file "
                            "is trusted, raise PIL.Image.MAX_IMAGE_PIXELS.") from None


def dicom_pipeline(window: str, intensity: str = "8bit") -> str:
    return (f"dicom: RescaleSlope/Intercept -> window {window} (DICOM linear) -> "
            "MONOCHROME1 inverted -> "
            + ("float32 RGB in [0, 1], no 8-bit rounding" if intensity == "float" else "8-bit RGB"))


def read_dicom(path: Path, window: str = "tags",
               intensity: str = "8bit") -> Image.Image | np.ndarray:
    """A single-frame DICOM as 8-bit RGB (or float32 [H, W, 3] in [0, 1] for
    ``intensity="float"``): modality rescale, window, MONOCHROME1 inversion.

    ``window``: "tags" uses WindowCenter/WindowWidth (the first pair), falling back to the
    image's min-max where the tags are absent; "minmax" always uses min-max; "C,W" fixes one.
    """
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(path)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise VlmprobeError(f"{path} has {ds.NumberOfFrames} frames; vlmprobe embeds single "
                            "images. Export the frames you want as separate files.")
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
        raise VlmprobeError(f"{path}: cannot decode transfer syntax "
                            f"{ds.file_meta.TransferSyntaxUID.name} ({e}).") from None
    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if photometric == "PALETTE COLOR":
        raise VlmprobeError(f"{path} is PALETTE COLOR, which vlmprobe does not decode yet; "
                            "convert it to RGB first.")
    if not photometric.startswith("MONOCHROME"):  # colour: pydicom already gives RGB
        return _as_intensity(arr / (2 ** int(ds.get("BitsStored", 8)) - 1), intensity)
    x = apply_rescale(arr, ds).astype(np.float64)
    centre, width = _window(ds, window, x)
    y = np.clip((x - (centre - 0.5)) / max(width - 1, 1) + 0.5, 0, 1)
    if photometric == "MONOCHROME1":
        y = 1 - y
    return _as_intensity(y, intensity)


def fixed_window(window: str) -> tuple[float, float] | None:
    """``(centre, width)`` for a "C,W" window, None for "tags" or "minmax"; else an error."""
    if window in ("tags", "minmax"):
        return None
    try:
        centre, width = (float(v) for v in window.split(","))
    except ValueError:
        raise VlmprobeError(f"dicom_window {window!r} is not 'tags', 'minmax' or 'CENTER,WIDTH' "
                            "(e.g. '40,400').") from None
    return centre, width


def _window(ds, window: str, x: np.ndarray) -> tuple[float, float]:
    from pydicom.multival import MultiValue

    fixed = fixed_window(window)
    if fixed:
        return fixed
    if window == "tags" and "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = (v[0] if isinstance(v, MultiValue) else v  # several windows: the first
                         for v in (ds.WindowCenter, ds.WindowWidth))
        return float(centre), float(width)
    lo, hi = float(x.min()), float(x.max())
    return (lo + hi) / 2 + 0.5, hi - lo + 1


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fingerprint_files(root: Path, relpaths: list[str],
                      labels: list[str] | None = None) -> tuple[list[int], list[str], str]:
    """Sizes, content digests and the dataset fingerprint of ``relpaths`` (and ``labels``, if given).

    No mtimes, so a copied dataset keeps its fingerprint; sorted, so listing order does not matter.
    A slot of an npz gets its file's size and digest (read once), and its relpath names the slot,
    so the fingerprint covers both the file and which samples of it are used.
    """
    files = sorted({sample_file(r) for r in relpaths})
    known = {f: ((root / f).stat().st_size, file_digest(root / f)) for f in files}
    sizes = [known[sample_file(r)][0] for r in relpaths]
    digests = [known[sample_file(r)][1] for r in relpaths]
    h = hashlib.sha256()
    tails = [f"\t{x}" for x in labels] if labels is not None else [""] * len(relpaths)
    for r, s, d, t in sorted(zip(relpaths, sizes, digests, tails)):
        h.update(f"{r}\t{s}\t{d}{t}\n".encode())
    return sizes, digests, h.hexdigest()
