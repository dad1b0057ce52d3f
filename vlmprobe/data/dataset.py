"""A dataset on disk: its entry, root and samples, listed by :func:`load_dataset` with the
run's choices (label level, class subset, size, DICOM window, intensity); where datasets live.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..registry import DatasetEntry, get_dataset_entry
from ..validation import VlmprobeError, check_dir
from .decode import (FLOAT_PIPELINE, INTENSITIES, INTENSITY_PIPELINE, NPZ_FLOAT_PIPELINE,
                     NPZ_PIPELINE, dicom_pipeline, fingerprint_files, fixed_window, read_sample,
                     require_pydicom, sample_file, sample_kind)
from .loaders import LOADERS, MEDMNIST_SIZES, Sample, assign_groups, join_metadata, manifest_classes
from .own import is_own_spec, own_entry
from .volumes import (VOLUME_MODES, WHOLE_VOLUME_PIPELINE, expand_volumes, is_nifti,
                      volume_pipeline)

DATA_ENV = "VLMPROBE_DATA"


def data_root(dataset: str, root: str | Path | None = None,
              entry: DatasetEntry | None = None) -> Path:
    """``--root`` if given, else the entry's own ``root`` (an own dataset's folder, or a user
    entry's), else ``$VLMPROBE_DATA/<dataset>``, else ``./data/<dataset>``."""
    if root is None and entry is not None and entry.root:
        root = entry.root
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get(DATA_ENV)
    return (Path(base).expanduser() if base else Path("data")) / dataset


def root_rule(entry: DatasetEntry) -> str:
    """Where vlmprobe looks for a dataset's root, in words (``datasets info``, missing roots)."""
    if entry.root:
        return f"root: {entry.root} (--root DIR overrides it)"
    return (f"root: --root DIR, else ${DATA_ENV}/{entry.name}, else ./data/{entry.name} (here: "
            f"{data_root(entry.name)})")


def images_root(cache, root: str | Path | None = None) -> Path:
    """Where a cache's images are: ``root``, else the folder it was extracted from if that is
    still there, else the dataset's default data folder (RISE and UMAP thumbnails read images)."""
    if root is not None:
        return Path(root)
    hint = cache.dataset_root
    return Path(hint) if hint and Path(hint).is_dir() else data_root(cache.dataset)


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
        tags', e.g. "window=minmax"): named in the cache file (:func:`vlmprobe.cache.cache_path`),
        so caches of one dataset under two intensity pipelines sit side by side. Unlike the label
        view it leaves the fingerprint alone: both share one split, so probes compare them."""
        window = (self.entry.dicom_window != "tags"
                  and any(sample_kind(s.relpath) in ("dicom", "volume") for s in self.samples))
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
        kinds = {sample_kind(s.relpath) for s in self.samples}
        as_float = self.entry.intensity == "float"
        parts = {"raster": FLOAT_PIPELINE if as_float else INTENSITY_PIPELINE,
                 "npz": NPZ_FLOAT_PIPELINE if as_float else NPZ_PIPELINE,
                 "dicom": dicom_pipeline(self.entry.dicom_window, self.entry.intensity),
                 "volume": volume_pipeline(self.entry.dicom_window, self.entry.intensity),
                 "volume3d": WHOLE_VOLUME_PIPELINE}
        return " + ".join(v for k, v in parts.items() if k in kinds)


def dataset_options(label_level: int | None = None, classes: str | list[str] | None = None,
                    size: int | None = None, dicom_window: str | None = None,
                    intensity: str | None = None, *, name: str | None = None,
                    path_column: str | None = None, label_column: str | None = None,
                    group_column: str | None = None, meta_columns: str | list[str] | None = None,
                    slice_step: int | None = None, dicom_series: bool | None = None,
                    volume: str | None = None) -> dict:
    """:func:`load_dataset` options from command-line values (None: the entry's default).

    ``classes`` and ``meta_columns`` may be comma lists ("a,b"); these choices define what a
    cache and its split cover, so each is recorded in the cache's dataset entry. ``name`` and
    the columns are an own dataset's (``csv:FILE``): its key, and which manifest columns hold
    the path, the label, the patient id and the metadata kept.
    """
    classes, meta_columns = (_comma_list(v) for v in (classes, meta_columns))
    opts = {"label_level": label_level, "class_subset": classes, "size": size,
            "dicom_window": dicom_window, "intensity": intensity, "name": name,
            "path_column": path_column, "label_column": label_column,
            "group_column": group_column, "metadata_columns": meta_columns,
            "slice_step": slice_step, "dicom_series": dicom_series or None, "volume": volume}
    return {k: v for k, v in opts.items() if v is not None}


def _comma_list(value: str | list[str] | None) -> list[str] | None:
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return value


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


def resolve_dataset(dataset: str | DatasetEntry, datasets: list[Path] | tuple = (),
                    **options) -> DatasetEntry:
    """The entry a run uses: a registry key (built in, ``$VLMPROBE_DATASETS`` or ``datasets``
    files), an own ``imagefolder:DIR`` / ``csv:FILE``, or an entry object, with ``options``
    (entry fields: size, dicom_window, label_column, ``name`` for an own dataset's key, ...)."""
    if isinstance(dataset, DatasetEntry):
        entry = dataset
    elif is_own_spec(dataset):
        entry = own_entry(dataset)
    elif isinstance(dataset, str):
        entry = get_dataset_entry(dataset, datasets)
        if "name" in options:
            raise VlmprobeError(f"name={options['name']!r} renames an own dataset "
                                f"(imagefolder:DIR or csv:FILE); {dataset!r} is a registry key.")
    else:
        raise VlmprobeError(f"A dataset is a registry key, imagefolder:DIR, csv:FILE or a "
                            f"vlmprobe.DatasetEntry, not {type(dataset).__name__}: {dataset!r}.")
    known = {f.name for f in fields(DatasetEntry)}
    bad = set(options) - known
    if bad:
        raise VlmprobeError(f"Unknown dataset option(s) {sorted(bad)}; options are entry fields "
                            f"such as size, dicom_window, label_column, slice_step.")
    return replace(entry, **options)


def load_dataset(dataset: str | DatasetEntry, root: str | Path | None = None, *,
                 datasets: list[Path] | tuple = (), **options) -> ImageDataset:
    """List a dataset's images and labels from ``root`` (or ``$VLMPROBE_DATA/<name>``).

    ``dataset``: a registry key, ``imagefolder:DIR``, ``csv:MANIFEST.csv`` or a
    :class:`DatasetEntry`; ``datasets``: user registry files beside ``$VLMPROBE_DATASETS``.
    ``options`` override entry fields for this run (e.g. ``size=224``, ``dicom_window="minmax"``,
    ``label_column="dx"``, ``name="my_set"``); the entry as used is what every cache records.
    """
    entry = _label_level(resolve_dataset(dataset, datasets, **options))
    name = entry.name
    fixed_window(entry.dicom_window)  # a typo fails here, not once per image
    if entry.intensity not in INTENSITIES:
        raise VlmprobeError(f"intensity {entry.intensity!r}: choose one of "
                            f"{', '.join(INTENSITIES)} (float: no 8-bit rounding before the "
                            "model's transform).")
    if entry.layout == "medmnist" and entry.size not in MEDMNIST_SIZES:
        raise VlmprobeError(f"size {entry.size} is not a MedMNIST size; choose one of "
                            f"{MEDMNIST_SIZES}.")
    if not isinstance(entry.slice_step, int) or entry.slice_step < 1:
        raise VlmprobeError(f"slice_step {entry.slice_step!r}: give a positive integer (every "
                            "k-th axial slice of a volume).")
    if entry.volume not in VOLUME_MODES:
        raise VlmprobeError(f"volume {entry.volume!r}: choose one of {', '.join(VOLUME_MODES)} "
                            "(slices: axial 2-D samples; whole: one sample per volume, for 3-D "
                            "encoders).")
    if is_own_spec(dataset) and entry.layout == "imagefolder" and root is not None \
            and Path(root).expanduser().resolve() != Path(entry.root):
        raise VlmprobeError(f"{dataset} names its folder already; leave out --root {root} (or "
                            f"give imagefolder:{root}).")
    root = check_dir(data_root(name, root, entry), f"Dataset root for {name!r}",
                     f"\n{entry.describe()}\n{root_rule(entry)}")
    if entry.layout not in LOADERS:
        raise VlmprobeError(
            f"Dataset {name!r} uses layout {entry.layout!r}, which this vlmprobe version cannot "
            f"read yet (supported: {', '.join(sorted(LOADERS))}).")
    if entry.layout == "csv" and not entry.classes:
        entry = replace(entry, classes=manifest_classes(entry, root))
    samples = LOADERS[entry.layout](entry, root)
    if not samples:
        raise VlmprobeError(f"No images found under {root}. Expected layout for {name}: "
                            f"{entry.layout_help}")
    samples = expand_volumes(entry, root, samples)
    joined = bool(entry.metadata_csv) and (root / entry.metadata_csv).is_file()
    if joined:
        samples = join_metadata(samples, root / entry.metadata_csv, entry.metadata_key)
    elif entry.metadata_csv and entry.phantom_of:
        raise VlmprobeError(f"{root / entry.metadata_csv} is missing: a phantom root must hold the "
                            "manifest make-phantom wrote. Regenerate it (vlmprobe datasets "
                            "make-phantom).")
    truth = root / "manifest.csv"  # a phantom's per-image truth (vlmprobe.data.phantoms), any layout
    if (root / "phantom.json").is_file() and truth.is_file() and entry.metadata_csv != truth.name:
        samples = join_metadata(samples, truth)
    samples = assign_groups(entry, samples, joined)
    entry, samples = _select_classes(entry, samples)
    if not samples:
        raise VlmprobeError(f"No images of classes {entry.class_subset} under {root}.")
    dicom = next((s.relpath for s in samples if sample_kind(s.relpath) == "dicom"
                  or sample_kind(s.relpath) in ("volume", "volume3d")
                  and not is_nifti(sample_file(s.relpath))),
                 None)
    if dicom is not None:
        require_pydicom(root / sample_file(dicom))
    return ImageDataset(entry, root.resolve(), samples, list(entry.class_subset or entry.classes))
