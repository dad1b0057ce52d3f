"""Train/test splits shared by every model of a dataset (docs/protocol.md, the probe).

A split is written once per (dataset fingerprint, label view, grouping, seed, fractions) as
``<cache dir>/<dataset>/splits/<label>-<grouping>-seed<seed>-<key>.csv`` with a JSON sidecar, and
reused by every model, so all models are scored on identical images. CSV columns:
``relpath, label, test (0/1), fold (0..k-1 for training images, -1 for test images)``.

Groupings: ``paper`` (the default, what the paper did: stratified, ungrouped) and ``grouped``
(StratifiedGroupKFold by patient id, or by near-duplicate cluster where a dataset ships none), so
no group has images on both sides. Given the groups, the sidecar of either records how many
groups cross train/test: zero for ``grouped`` by construction, the leak for ``paper``.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from ..cache.chunks import write_atomic, written_beside
from ..provenance import provenance
from ..validation import VlmprobeError, check_labels_for_cv

GROUPINGS = ("paper", "grouped")


@dataclass(frozen=True)
class SplitSpec:
    label_view: str = "class"
    grouping: str = "paper"
    seed: int = 0
    test_fraction: float = 0.2
    n_folds: int = 5

    def key(self, fingerprint: str) -> str:
        payload = json.dumps({"fingerprint": fingerprint, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class Split:
    relpaths: list[str]
    test: np.ndarray  # bool [N]
    fold: np.ndarray  # int [N], -1 on test images
    spec: SplitSpec
    path: Path | None = None

    def align(self, relpaths: list[str], source: str) -> tuple[np.ndarray, np.ndarray]:
        """``(test, fold)`` in the order of ``relpaths`` (a cache's order)."""
        index = {r: i for i, r in enumerate(self.relpaths)}
        missing = [r for r in relpaths if r not in index]
        if missing:
            raise VlmprobeError(f"{source}: {len(missing)} image(s) are not in split file {self.path} "
                                f"(e.g. {missing[0]}). The dataset changed; delete the split file "
                                "to make a new one (all models will then be re-split together).")
        order = np.array([index[r] for r in relpaths])
        return self.test[order], self.fold[order]


def group_ids(groups: list[str], relpaths: list[str]) -> np.ndarray:
    """Integer group per image; an image without a group id ("") is a group of its own."""
    keys = [g if g else f"\0{r}" for g, r in zip(groups, relpaths)]
    return np.unique(keys, return_inverse=True)[1].ravel()


def crossing_groups(split: Split, relpaths: list[str], groups: list[str]) -> tuple[int, int]:
    """(groups with images in both train and test, groups) of ``split``."""
    test, _ = split.align(relpaths, "groups")
    g = group_ids(groups, relpaths)
    n = g.max() + 1 if len(g) else 0
    both = (np.bincount(g, test, n) > 0) & (np.bincount(g, ~test, n) > 0)
    return int(both.sum()), int(n)


def _grouped_parts(y: np.ndarray, g: np.ndarray, n_splits: int, seed: int, source: str):
    """StratifiedGroupKFold's folds, or an error saying there are too few groups."""
    if len(np.unique(g)) < n_splits:
        raise VlmprobeError(f"{source}: only {len(np.unique(g))} groups, too few for a grouped "
                            f"split into {n_splits} parts; use --split paper.")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [val for _, val in sgkf.split(np.zeros(len(y)), y, g)]


def make_split(relpaths: list[str], labels: np.ndarray, spec: SplitSpec, source: str = "",
               groups: list[str] | None = None) -> Split:
    """Seeded stratified test split, then stratified k folds on the rest; order-independent.

    ``grouped`` keeps every group (``groups[i]``, "" = its own) on one side of the test split and
    in one fold; stratification is then as close as whole groups allow.
    """
    if spec.grouping not in GROUPINGS:
        raise VlmprobeError(f"grouping {spec.grouping!r} is not available; use one of {GROUPINGS}.")
    check_labels_for_cv(labels, spec.n_folds, spec.test_fraction, source or "split")
    order = np.argsort(relpaths, kind="stable")
    paths = [relpaths[i] for i in order]
    y = np.asarray(labels)[order]
    idx = np.arange(len(paths))
    fold = np.full(len(paths), -1, dtype=np.int64)
    if spec.grouping == "grouped":
        if groups is None:
            raise VlmprobeError(f"{source or 'split'}: a grouped split needs a group per image "
                                "(patient id or near-duplicate cluster); `vlmprobe datasets split "
                                "NAME --split grouped` writes one from the dataset.")
        g = group_ids([groups[i] for i in order], paths)
        parts = _grouped_parts(y, g, round(1 / spec.test_fraction), spec.seed, source)
        test_idx = next((t for t in parts if len(set(y[t].tolist())) == len(set(y.tolist()))), None)
        if test_idx is None:  # the first part holding every class is the test set
            raise VlmprobeError(f"{source or 'split'}: no grouped test set holds every class; too "
                                "few groups per class for a grouped split. Use --split paper.")
        train_idx = np.setdiff1d(idx, test_idx)
        parts = _grouped_parts(y[train_idx], g[train_idx], spec.n_folds, spec.seed, source)
        for k, val in enumerate(parts):
            fold[train_idx[val]] = k
    else:
        train_idx, test_idx = train_test_split(idx, test_size=spec.test_fraction, stratify=y,
                                               random_state=spec.seed)
        skf = StratifiedKFold(n_splits=spec.n_folds, shuffle=True, random_state=spec.seed)
        for k, (_, val) in enumerate(skf.split(train_idx, y[train_idx])):
            fold[train_idx[val]] = k
    test = np.zeros(len(paths), dtype=bool)
    test[test_idx] = True
    return Split(paths, test, fold, spec)


def write_split(split: Split, labels_by_path: dict[str, str], path: Path, extra: dict) -> Path:
    """The JSON sidecar, then the CSV: readers look for the CSV, so one that finds it (say a
    second run making the same split at once) finds its sidecar too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path.with_suffix(".json"), json.dumps(
        {"spec": split.spec.__dict__, "columns": {"relpath": "path relative to the dataset root",
         "label": "label name", "test": "1 = held-out test image",
         "fold": "cross-validation fold of a training image, -1 for test images"},
         **extra, "provenance": provenance(stage="split")}, indent=2, default=str))
    with written_beside(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["relpath", "label", "test", "fold"])
        for r, t, k in zip(split.relpaths, split.test, split.fold):
            w.writerow([r, labels_by_path[r], int(t), int(k)])
    split.path = path
    return path


def read_split(path: Path) -> Split:
    """A split file and its spec (from the JSON sidecar)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        spec = SplitSpec(**json.loads(path.with_suffix(".json").read_text())["spec"])
        return Split([r["relpath"] for r in rows], np.array([r["test"] == "1" for r in rows]),
                     np.array([int(r["fold"]) for r in rows]), spec, path)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise VlmprobeError(f"Split file {path} (or its .json sidecar) is unreadable ({e}); delete "
                            "both to make a new split.") from None


def split_path(split_dir: Path, fingerprint: str, spec: SplitSpec) -> Path:
    return Path(split_dir) / f"{spec.label_view}-{spec.grouping}-seed{spec.seed}-{spec.key(fingerprint)}.csv"


def load_or_create_split(split_dir: Path, fingerprint: str, relpaths: list[str],
                         labels: np.ndarray, label_names: list[str], spec: SplitSpec,
                         source: str = "", groups: list[str] | None = None,
                         group_source: str = "") -> Split:
    """The split file for this dataset/spec: read if it exists, else made once and written.

    With ``groups`` (and ``group_source``, what they are), the sidecar records the grouping's
    leakage: groups crossing train/test (0 for ``grouped``), out of how many.
    """
    path = split_path(split_dir, fingerprint, spec)
    if path.is_file():
        return read_split(path)
    split = make_split(relpaths, labels, spec, source, groups)
    names = {r: label_names[int(l)] for r, l in zip(relpaths, labels)}
    extra = {"dataset_fingerprint": fingerprint}
    if groups is not None:
        crossing, n_groups = crossing_groups(split, relpaths, groups)
        extra.update(groups={"source": group_source, "n_groups": n_groups,
                             "n_crossing_train_test": crossing})
    write_split(split, names, path, extra)
    return split
