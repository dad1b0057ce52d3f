"""``vlmprobe cache import``: embeddings another tool computed, with their labels, as a vlmprobe
cache (the schema of :mod:`.schema`), so that probe and umap read them like an extracted cache.
RISE cannot: it runs images through the encoder, which an imported cache does not have.

Features files, by suffix:

- ``.npy`` (an array [N, d]), ``.npz`` (its array ``features`` or ``embeddings``, or its only
  2-D array), ``.pt`` (a tensor [N, d], or a dict holding one under ``features`` or
  ``embeddings``; read with ``torch.load(weights_only=True)``, so no pickled code runs): row i is
  row i of the labels CSV.
- ``.h5``: TRIDENT-style, one file per slide (a file, or a folder of them) holding ``features``
  [n_patches, d] (or a slide embedding [d]) and ``coords`` [n_patches, 2]; the labels CSV has one
  row per slide, its id column naming the file's stem. ``per="slide"``: one sample per slide, the
  patch features pooled by ``pool`` (``mean``: every patch weighs the same; ``max``: the
  elementwise maximum); ``per="patch"``: one sample per patch, labelled with its slide's label,
  grouped by slide (metadata ``group``), so grouped splits keep a slide's patches on one side;
  the patch's ``coords`` become metadata ``x`` and ``y``.
- ``.csv``: an eva embeddings manifest (columns ``origin``, ``embeddings``, ``target``, optionally
  ``split``), each row naming a ``.pt`` file beside it (a tensor [d], or [n, d] pooled by
  ``pool``); ``target`` is the label, ``split`` kept as metadata. No labels CSV.

The labels CSV: ``label_column`` (default ``label``); ``id_column`` (default ``id``; the sample
ids, else row numbers; required for ``.h5``); ``group_column`` (patient ids, metadata ``group``)
and ``meta_columns`` (default every other column) kept as metadata.

The cache records what was imported (the ``imported`` attribute: format, files with their sha256,
columns, pooling rule) and lists the features files in ``/files``. Its dataset fingerprint is
that of the sample ids and labels only, so features of the same samples from two tools share
one split and their probes pair. Every check runs before anything is written.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from ..data.decode import file_digest
from ..provenance import provenance, sha256_file
from ..validation import VlmprobeError
from .paths import cache_dir, cache_path
from .schema import Cache, cache_key, write_cache

FORMATS = {".npy": "npy", ".npz": "npz", ".pt": "pt", ".h5": "trident", ".csv": "eva"}
PER = ("slide", "patch")
POOLS = ("mean", "max")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
log = logging.getLogger(__name__)


def import_features(features: str | Path, labels: str | Path | None = None, *, model: str,
                    dataset: str, out: str | Path | None = None, per: str = "slide",
                    pool: str = "mean", id_column: str = "id", label_column: str = "label",
                    group_column: str | None = None, meta_columns: list[str] | None = None,
                    force: bool = False) -> Path:
    """Write ``features`` (with ``labels``) as the cache ``<out>/<dataset>/<model>.h5``; return
    its path. ``model`` and ``dataset`` name it as an extracted cache's model and dataset would
    (stage outputs, tables and figures use them)."""
    for what, value in (("model", model), ("dataset", dataset)):
        if not _NAME.fullmatch(value or ""):
            raise VlmprobeError(f"cache import: {what} name {value!r} must be letters, digits and "
                                "._+- (it names the cache file and the stage outputs).")
    if per not in PER or pool not in POOLS:
        raise VlmprobeError(f"cache import: per must be one of {PER} and pool one of {POOLS}; "
                            f"got per={per!r}, pool={pool!r}.")
    features = Path(features).expanduser()
    suffix = ".h5" if features.is_dir() else features.suffix.lower()
    if not features.exists() or suffix not in FORMATS:
        raise VlmprobeError(f"cache import: {features} " + (
            "does not exist." if not features.exists() else
            f"is not a features file vlmprobe reads ({', '.join(FORMATS)}, or a folder of "
            "TRIDENT .h5 files)."))
    fmt = FORMATS[suffix]
    if fmt == "eva":
        samples = _eva(features, pool)
    else:
        if labels is None:
            raise VlmprobeError(f"cache import: {features} needs a labels CSV (--labels FILE) "
                                f"with a {label_column!r} column.")
        table = _labels(Path(labels).expanduser(), id_column, label_column, group_column,
                        meta_columns, required_id=fmt == "trident")
        samples = (_trident(features, table, per, pool) if fmt == "trident"
                   else _rows(_matrix(features, fmt), features, table))
    emb, ids, names, meta, sources = samples
    path = cache_path(cache_dir(out), dataset, model)
    if path.exists() and not force:
        raise VlmprobeError(f"{path} exists; pass --force (force=True) to replace it.")
    class_names = sorted(set(names))
    fingerprint = hashlib.sha256("".join(f"{i}\t{n}\n" for i, n in sorted(zip(ids, names)))
                                 .encode()).hexdigest()
    record = {"format": fmt, "files": {str(p): sha256_file(p) for p in sources},
              "labels": None if labels is None or fmt == "eva" else {
                  "file": str(Path(labels).expanduser()),
                  "sha256": sha256_file(Path(labels).expanduser()),
                  "id_column": id_column, "label_column": label_column,
                  "group_column": group_column},
              "per": per if fmt == "trident" else None,
              "pool": pool if fmt == "trident" and per == "slide" or fmt == "eva" else None}
    if record["pool"]:
        record["pool_rule"] = ("the mean over a sample's patch rows, each weighing the same"
                               if pool == "mean" else "the elementwise maximum over its patch rows")
    emb = np.ascontiguousarray(emb, np.float32)
    key = cache_key({"imported": record}, fingerprint, "imported")
    encoder = {"family": "imported", "entry": {"name": model, "family": "imported", "tap": None},
               "weights_sha256": None}
    cache = Cache(
        embeddings=emb, labels=np.array([class_names.index(n) for n in names], np.int64),
        relpaths=ids, class_names=class_names, model=model, dataset=dataset,
        dataset_fingerprint=fingerprint, cache_key=key, metadata=meta,
        files={"relpath": [p.name for p in sources], "size": [p.stat().st_size for p in sources],
               "digest": [file_digest(p) for p in sources]},
        attrs={"encoder": encoder, "imported": record, "baseline": False,
               "dataset_entry": {"name": dataset, "layout": "imported",
                                 "group_column": group_column or (
                                     "slide" if per == "patch" and fmt == "trident" else None)},
               "provenance": provenance(stage="cache import", imported=record)})
    return write_cache(path, cache)


def _labels(path: Path, id_column: str, label_column: str, group_column: str | None,
            meta_columns: list[str] | None, required_id: bool) -> dict:
    """The labels CSV checked row by row: {"ids", "labels", "meta", "path"}."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise VlmprobeError(f"Labels file {path} is unreadable ({e}).") from None
    columns = list(rows[0]) if rows else []
    needed = [label_column] + ([id_column] if required_id else []) + (
        [group_column] if group_column else []) + list(meta_columns or [])
    absent = [c for c in needed if c not in columns]
    if not rows or absent:
        raise VlmprobeError(f"Labels file {path}: " + (f"columns {absent} not found (it has "
                            f"{columns}); name them with --id-column/--label-column/"
                            "--group-column/--meta-columns." if rows else "no rows."))
    has_id = id_column in columns
    keep = list(meta_columns) if meta_columns is not None else [
        c for c in columns if c not in (id_column, label_column, group_column)]
    ids, seen = [], {}
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"Labels file {path}, row {n}"
        if None in row or any(v is None for v in row.values()):
            raise VlmprobeError(f"{where} does not have the header's {len(columns)} columns.")
        if not row[label_column].strip():
            raise VlmprobeError(f"{where}: empty {label_column!r}; every sample needs a label.")
        sample = row[id_column].strip() if has_id else f"row{n - 1:06d}"
        if sample in seen:
            raise VlmprobeError(f"{where}: id {sample!r} repeats row {seen[sample]}; ids must be "
                                "unique.")
        seen[sample] = n
        ids.append(sample)
    meta = {c: [r[c] for r in rows] for c in keep}
    if group_column:
        meta["group"] = [r[group_column] for r in rows]
    return {"ids": ids, "labels": [r[label_column].strip() for r in rows], "meta": meta,
            "path": path}


def _matrix(path: Path, fmt: str) -> np.ndarray:
    """The [N, d] array of an .npy, .npz or .pt file."""
    try:
        if fmt == "npy":
            array = np.load(path, allow_pickle=False)
        elif fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                two_d = [k for k in z.files if z[k].ndim == 2]
                key = next((k for k in ("features", "embeddings") if k in z.files),
                           two_d[0] if len(two_d) == 1 else None)
                if key is None:
                    raise VlmprobeError(f"{path} holds {z.files}: name the features array "
                                        "'features' (or keep one 2-D array).")
                array = z[key]
        else:
            array = _pt(path)
    except (OSError, ValueError, RuntimeError, EOFError) as e:
        raise VlmprobeError(f"Features file {path} is unreadable ({e}).") from None
    array = np.asarray(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise VlmprobeError(f"Features file {path}: expected a numeric array [samples, dim], got "
                            f"shape {array.shape} ({array.dtype}).")
    return array


def _pt(path: Path) -> np.ndarray:
    """A tensor (or a dict holding one under features/embeddings) of a .pt file, loaded with
    weights_only=True: tensors and plain containers only, never pickled code."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's pickle refusals have many types
        raise VlmprobeError(f"Features file {path} is not a tensor file torch.load reads with "
                            f"weights_only=True ({str(e)[:200]}).") from None
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("features", "embeddings") if k in obj), None)
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        obj = torch.stack([t.reshape(-1) for t in obj])  # eva's list of per-sample tensors
    if not isinstance(obj, torch.Tensor):
        raise VlmprobeError(f"Features file {path}: expected a tensor, or a dict with "
                            "'features' or 'embeddings'.")
    return obj.detach().float().numpy()


def _finite(array: np.ndarray, path: Path, rows: str = "row") -> None:
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise VlmprobeError(f"Features file {path}: {rows} {bad[0]} (0-based) holds NaN or "
                            f"infinite values ({len(bad)} such rows); fix the export.")


def _rows(array: np.ndarray, path: Path, table: dict):
    """One sample per features row, matched to the labels CSV in order."""
    if len(array) != len(table["ids"]):
        raise VlmprobeError(f"Features file {path} has {len(array)} rows but labels file "
                            f"{table['path']} has {len(table['ids'])}; row i of one must be "
                            "row i of the other.")
    _finite(array, path)
    return array, table["ids"], table["labels"], table["meta"], [path]


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise VlmprobeError(f"{path} has no 'features' dataset (it holds "
                                    f"{sorted(f)}); TRIDENT writes features and coords.")
            feats = np.asarray(f["features"][()], np.float32)
            coords = f["coords"][()] if "coords" in f else None
    except OSError as e:
        raise VlmprobeError(f"Features file {path} is unreadable ({e}).") from None
    if feats.ndim == 3 and feats.shape[0] == 1:  # some writers keep a batch axis
        feats = feats[0]
    feats = feats.reshape(1, -1) if feats.ndim == 1 else feats
    if feats.ndim != 2 or not len(feats):
        raise VlmprobeError(f"{path}: features has shape {feats.shape}; expected [patches, dim].")
    if coords is not None and len(coords) != len(feats):
        raise VlmprobeError(f"{path}: {len(feats)} feature rows but {len(coords)} coords.")
    return feats, coords


def _pooled(feats: np.ndarray, pool: str) -> np.ndarray:
    return feats.mean(axis=0) if pool == "mean" else feats.max(axis=0)


def _trident(features: Path, table: dict, per: str, pool: str):
    """One sample per slide (pooled) or per patch (grouped by slide), slides in CSV order."""
    files = sorted(features.glob("*.h5")) if features.is_dir() else [features]
    by_id = {p.stem: p for p in files}
    wanted = set(table["ids"])
    missing = [(n, i) for n, i in enumerate(table["ids"], start=2) if i not in by_id]
    if missing:
        n, i = missing[0]
        raise VlmprobeError(f"Labels file {table['path']}, row {n}: slide {i!r} has no features "
                            f"file {i}.h5 in {features} ({len(missing)} such rows).")
    if not features.is_dir() and len(wanted) != 1:
        raise VlmprobeError(f"{features} is one slide's file but labels file {table['path']} "
                            f"lists {len(wanted)} slides; give the folder of .h5 files.")
    unlabelled = sorted(by_id.keys() - wanted)
    if unlabelled:
        log.info("%s: %d slide file(s) without a row in %s left out (e.g. %s)", features,
                 len(unlabelled), table["path"], unlabelled[0])
    rows, ids, names, sources, dim = [], [], [], [], None
    meta = {k: [] for k in table["meta"]} | ({"slide": [], "x": [], "y": []}
                                              if per == "patch" else {})
    if per == "patch":
        meta["group"] = []
    for k, slide in enumerate(table["ids"]):
        path = by_id[slide]
        feats, coords = _read_h5(path)
        if dim is not None and feats.shape[1] != dim:
            raise VlmprobeError(f"{path}: features are {feats.shape[1]}-d but "
                                f"{sources[0]} holds {dim}-d ones; one cache is one embedding.")
        dim = feats.shape[1]
        _finite(feats, path, "patch row")
        sources.append(path)
        n = 1 if per == "slide" else len(feats)
        rows.append(_pooled(feats, pool)[None] if per == "slide" else feats)
        if per == "slide":
            ids.append(slide)
        else:
            xy = coords if coords is not None else np.full((n, 2), -1)
            ids += [f"{slide}#{int(x)}_{int(y)}" if coords is not None else f"{slide}#{j}"
                    for j, (x, y) in enumerate(xy)]
            meta["slide"] += [slide] * n
            meta["x"] += [str(int(x)) for x, _ in xy]
            meta["y"] += [str(int(y)) for _, y in xy]
            if "group" not in table["meta"]:
                meta["group"] += [slide] * n
        names += [table["labels"][k]] * n
        for c, values in table["meta"].items():
            meta[c] += [values[k]] * n
    if len(set(ids)) != len(ids):
        raise VlmprobeError(f"{features}: two patches of one slide share their coords; "
                            "vlmprobe names a patch <slide>#<x>_<y>.")
    return np.concatenate(rows), ids, names, meta, sources


def _eva(manifest: Path, pool: str):
    """eva's embeddings manifest: origin, embeddings (a .pt file beside it), target[, split]."""
    table = _labels(manifest, "origin", "target", None, [c for c in ("split",) if c in
                                                         _header(manifest)], required_id=True)
    if "embeddings" not in _header(manifest):
        raise VlmprobeError(f"{manifest}: an eva manifest has an 'embeddings' column naming each "
                            "row's .pt file; this one has none.")
    with open(manifest, newline="") as f:
        files = [manifest.parent / r["embeddings"] for r in csv.DictReader(f)]
    rows = []
    for n, path in enumerate(files, start=2):
        if not path.is_file():
            raise VlmprobeError(f"{manifest}, row {n}: embeddings file {path} does not exist.")
        x = _pt(path)
        x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(-1, x.shape[-1])
        if rows and x.shape[1] != rows[0].shape[0]:
            raise VlmprobeError(f"{manifest}, row {n}: {path} holds {x.shape[1]}-d embeddings, "
                                f"row 2's file {rows[0].shape[0]}-d.")
        _finite(x, path)
        rows.append(_pooled(x, pool))
    return np.stack(rows), table["ids"], table["labels"], table["meta"], [manifest, *files]


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])

