"""Own datasets without a YAML edit: ``imagefolder:DIR`` (one folder per class) and
``csv:MANIFEST.csv`` (one row per image: path, label, optional group and metadata columns).

The entry is made here, from the folder or manifest itself; its key is
``<folder or file name>-<8 hex of the resolved path>`` (``name=`` overrides it), so caches
(``<cache dir>/<key>/``) and split files (``<cache dir>/<key>/splits/``) of one folder find each
other from every command, and two folders of the same name do not collide.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..registry import DatasetEntry
from ..registry.datasets import IMAGE_SUFFIXES
from ..validation import VlmprobeError
from .decode import is_dicom_file

#: the layouts an own dataset names before the colon
OWN_LAYOUTS = ("imagefolder", "csv")
IMAGEFOLDER_HELP = "<root>/<class>/... image files, one folder per class (subfolders allowed)"


def is_own_spec(dataset) -> bool:
    """``imagefolder:DIR`` or ``csv:FILE`` (a registry key never holds a colon)."""
    return isinstance(dataset, str) and dataset.partition(":")[0] in OWN_LAYOUTS and ":" in dataset


def is_image_file(path: Path) -> bool:
    """An image by its suffix, or a DICOM file without one (exports such as ``IM000001``)."""
    return path.name.lower().endswith(IMAGE_SUFFIXES) or (
        not path.suffix and path.is_file() and is_dicom_file(path))


def own_key(path: Path) -> str:
    """``<name>-<8 hex>``: the folder's or manifest's name (without suffix) and a hash of its
    resolved path."""
    resolved = path.expanduser().resolve()
    stem = resolved.stem if resolved.is_file() else resolved.name
    return f"{stem or 'root'}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(is_image_file(p) and p.is_file() for p in d.rglob("*")))


def own_entry(spec: str) -> DatasetEntry:
    """The entry of ``imagefolder:DIR`` or ``csv:FILE``; the column options of a csv manifest
    (path_column, label_column, group_column, metadata_columns) are entry fields, set by the
    caller like any other dataset option. The entry's ``root`` is the folder (imagefolder) or
    the manifest's folder (csv: manifest paths are relative to it, or to ``--root``)."""
    layout, _, location = spec.partition(":")
    path = Path(location).expanduser()
    if not location:
        raise VlmprobeError(f"{spec!r}: name the {'folder' if layout == 'imagefolder' else 'manifest'}"
                            f" after the colon, e.g. {layout}:/data/my_set"
                            + ("" if layout == "imagefolder" else "/labels.csv") + ".")
    resolved = path.resolve()
    common = dict(name=own_key(path), modality="not recorded", source=f"your own files ({resolved})",
                  licence="not recorded (yours)", defined_in=str(resolved),
                  root=str(resolved if layout == "imagefolder" else resolved.parent))
    if layout == "imagefolder":
        if not resolved.is_dir():
            raise VlmprobeError(f"imagefolder:{location}: {resolved} is not a folder. Expected: "
                                f"{IMAGEFOLDER_HELP}.")
        classes = _class_folders(resolved)
        if not classes:
            raise VlmprobeError(f"imagefolder:{location}: {resolved} has no class folder holding "
                                f"images ({' '.join(IMAGE_SUFFIXES)}). Expected: "
                                f"{IMAGEFOLDER_HELP}.")
        return DatasetEntry(paper_name=f"image folder {resolved.name}", classes=classes,
                            layout="imagefolder", layout_help=IMAGEFOLDER_HELP,
                            subset="every image under the class folders", **common)
    if not resolved.is_file():
        raise VlmprobeError(f"csv:{location}: {resolved} is not a file. Expected a CSV (or .tsv) "
                            "manifest with one row per image: a path column (default 'path', "
                            "relative to the manifest's folder or --root) and a label column "
                            "(default 'label').")
    return DatasetEntry(paper_name=f"manifest {resolved.name}", classes=[], layout="csv",
                        layout_help=f"{resolved}: one row per image, paths relative to the root "
                                    "(default: the manifest's folder)",
                        manifest=str(resolved), label_column="label",
                        subset="every row of the manifest", **common)
