"""Phantom datasets: seeded synthetic stand-ins in the real on-disk layout, with known truth.

No real medical image can be downloaded where the demo and the tests run, yet the probe, the UMAP
maps and RISE must be checked against something whose truth is known. A phantom is written in the
real dataset's layout (so the real loader reads it), plus ``manifest.csv`` (per-image truth: word,
text box, lesion geometry, mask) and ``phantom.json`` (generator, version, every parameter).

Modules: :mod:`.breastus` (BUSI, with the burnt-in word), :mod:`.study` (the other seven
datasets, with a site mark), :mod:`.ctdicom` (DICOM whose class shows only inside a window),
:mod:`.ct3d` (whole CT volumes, NIfTI and DICOM series), :mod:`.common` (what they share).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ...validation import VlmprobeError, unknown_key_error
from .breastus import write_breastus
from .common import MIN_PER_CLASS
from .ct3d import write_ct3d
from .ctdicom import write_ctdicom
from .study import WRITERS

GENERATOR_VERSION = "1"


#: dataset key -> writer(out, n, seed, r, progress, size, minimum) -> facts for phantom.json
GENERATORS: dict[str, Callable[..., dict]] = {"breastus": write_breastus, **WRITERS,
                                              "ctdicom": write_ctdicom, "ct3d": write_ct3d}
DEFAULT_N = {"breastus": 600, "ct3d": 40}  # others: PHANTOM_N, small and fast


PHANTOM_N = 120


def make_phantom(dataset: str, out: Path, n: int | None = None, seed: int = 0,
                 text_label_correlation: float = 0.8, progress: bool = True,
                 size: int = 28, min_per_class: int = MIN_PER_CLASS) -> Path:
    """Write the phantom of ``dataset`` into ``out`` (new or empty) and return ``out``.

    ``n`` defaults to 600 for breastus (the demo) and :data:`PHANTOM_N` for the others;
    ``text_label_correlation`` is the r of the burnt-in word (breastus) or of the site (others);
    ``size`` is the MedMNIST image size (pneumoniamnist); ``min_per_class`` the fewest images
    a class the real set has gets (7 lets every class be probed: a 20% test split plus 5 folds),
    the others keeping the real proportions.
    """
    if dataset not in GENERATORS:
        raise unknown_key_error("phantom dataset", dataset, GENERATORS)
    n = DEFAULT_N.get(dataset, PHANTOM_N) if n is None else n
    if not 0.0 <= text_label_correlation <= 1.0:
        raise VlmprobeError("text_label_correlation must lie in [0, 1], got "
                            f"{text_label_correlation}.")
    if seed < 0:
        raise VlmprobeError(f"seed must be a non-negative integer, got {seed}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VlmprobeError(f"{out} is not an empty directory; give a new or empty one for the "
                            "phantom.")
    # Written beside ``out`` and renamed into place: an interrupted run leaves no half dataset.
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if min_per_class < 1:
        raise VlmprobeError(f"min_per_class must be >= 1, got {min_per_class}.")
    facts = GENERATORS[dataset](partial, n, seed, text_label_correlation, progress, size,
                                min_per_class)
    meta = {"generator": f"vlmprobe.data.phantoms.{dataset}", "version": GENERATOR_VERSION,
            "dataset": dataset,
            "parameters": {"n": n, "seed": seed, "text_label_correlation": text_label_correlation,
                           **({"size": size} if dataset == "pneumoniamnist" else {}),
                           **({"min_per_class": min_per_class}
                              if min_per_class != MIN_PER_CLASS else {})},
            **facts}
    (partial / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return out
