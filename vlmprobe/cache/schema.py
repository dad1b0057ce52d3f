"""The embedding cache: one HDF5 file per (model, dataset). This module alone owns its schema.

Files: ``<cache dir>/<dataset>/<model>.h5``; a non-default label view (``--label-level``,
``--classes``) gets its own ``<model>@<view>.h5``, e.g. ``clip@level2-classes=Candida+Trichomonas.h5``
(:func:`vlmprobe.cache.cache_path`), so views of one dataset coexist; so do intensity
pipelines (``--intensity float``: ``<model>@float.h5``; ``--dicom-window minmax``:
``<model>@window=minmax.h5``).

Schema version 3 (``/`` is the file root)::

    /embeddings          float32 [N, d]   one row per readable image, in ``relpaths`` order: the
                                          registry entry's own tap (``encoder.entry.tap``)
    /taps/<tap>          float32 [N, d_t] optional: further taps of the same forward pass
                                          (``extract --tap``), same rows; attribute sha256 (of
                                          its bytes, checked on read). Absent for one tap.
    /labels              int64   [N]      index into the ``class_names`` attribute
    /relpaths            str     [N]      posix paths relative to the dataset root
    /meta/<column>       str     [N]      per-image metadata (mask paths, manifest columns, ...)
    /files/relpath       str     [M]      every image file listed (M >= N), in sample order,
                                          for the fingerprint (a shard lists all M, too)
    /files/size          int64   [M]
    /files/digest        str     [M]      blake2b-128 of the file content
    /skipped/relpath     str     [K]      unreadable files, left out of /embeddings
    /skipped/error       str     [K]      why
    attrs: schema_version, model, dataset, class_names (JSON), embed_dim, baseline (bool),
           dataset_fingerprint, cache_key, intensity_pipeline, encoder (JSON: entry, preprocessing,
           weights_sha256), dataset_entry (JSON), phantom (JSON or ""), provenance (JSON),
           embeddings_sha256 (of the /embeddings bytes, checked on read), precision
           (fp32 | fp16 | bf16), batch_size (the fixed batch boundaries), shard ("" for a whole
           cache, "i/n" for shard i of n: the samples of batches k with k % n == i)

A cache made by ``vlmprobe cache import`` (:mod:`.imported`) from another tool's embeddings has
the same layout: ``/relpaths`` are the sample ids, ``/files`` lists the features files (not
images), the ``imported`` attribute (JSON) records the format, each file's sha256, the label
columns and the pooling rule, and the ``encoder`` attribute names family ``imported`` (no
weights: RISE refuses it).

Version 3 added the optional /taps group (a v3 file with one tap is laid out as a v2 file, and
keys did not change: v2 caches stay valid). Version 2 added embeddings_sha256, precision,
batch_size and shard; version 1 files are still read (without the checksum check), but their key
differs, so ``extract`` redoes them. Stages take one tap at a time: ``read_cache(path, tap=...)``
puts the chosen tap in ``Cache.embeddings`` (``Cache.tap`` names it) and names the cache
``<model>@<tap>``; ``probe --tap`` and ``umap --tap`` (a name or ``all``) use it.
The file is written to a temporary name and renamed into place, so a cache that exists is whole;
how extraction gets there crash-safely is in :mod:`vlmprobe.cache.chunks`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from ..validation import VlmprobeError, check_name

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: the schema number inside cache keys: bumped only when a request's embeddings change meaning,
#: not for a layout change that old files still satisfy (v3's optional /taps)
KEY_SCHEMA = 2
_STR = h5py.string_dtype()


@dataclass
class Cache:
    """An embedding cache held in memory (embeddings of one dataset are small)."""

    embeddings: np.ndarray
    labels: np.ndarray
    relpaths: list[str]
    class_names: list[str]
    model: str
    dataset: str
    dataset_fingerprint: str
    cache_key: str
    metadata: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list] = field(default_factory=lambda: {"relpath": [], "size": [], "digest": []})
    skipped: dict[str, list[str]] = field(default_factory=lambda: {"relpath": [], "error": []})
    attrs: dict = field(default_factory=dict)  # JSON-decoded extra attributes
    path: Path | None = None
    taps: dict[str, np.ndarray] = field(default_factory=dict)  # further taps (/taps), by name
    schema_version: int = SCHEMA_VERSION

    # -- the attributes, each with its one default (version 1 files lack some) ------------------
    @property
    def encoder(self) -> dict:
        """How the encoder was described when the cache was made: entry, transform, weights."""
        return self.attrs.get("encoder", {})

    @property
    def entry(self) -> dict:
        """The registry entry as it was when the cache was made."""
        return self.encoder.get("entry", {})

    @property
    def family(self) -> str | None:
        return self.encoder.get("family")

    @property
    def weights_sha256(self) -> str | None:
        return self.encoder.get("weights_sha256")

    @property
    def registry_key(self) -> str:
        """The model's registry key: ``model`` without a further tap's ``@<tap>``."""
        return self.model.partition("@")[0]

    @property
    def dataset_entry(self) -> dict:
        """The dataset entry as used: with the run's choices (window, intensity, classes)."""
        return self.attrs.get("dataset_entry", {})

    @property
    def dicom_window(self) -> str:
        return self.dataset_entry.get("dicom_window", "tags")

    @property
    def intensity(self) -> str:
        """"8bit" or "float": what the model's transform was given."""
        return self.dataset_entry.get("intensity", "8bit")

    @property
    def positive_class(self) -> str | None:
        return self.dataset_entry.get("positive_class")

    @property
    def group_source(self) -> str:
        """What the metadata column "group" is (e.g. "patient"), in words."""
        entry = self.dataset_entry
        return entry.get("group_key") or entry.get("group_column") or "group"

    @property
    def intensity_pipeline(self) -> str:
        return self.attrs.get("intensity_pipeline", "")

    @property
    def precision(self) -> str:
        """fp32 | fp16 | bf16 (version 1 files, which do not say, were fp32)."""
        return self.attrs.get("precision", "fp32")

    @property
    def batch_size(self) -> int | None:
        return self.attrs.get("batch_size")

    @property
    def dataset_root(self) -> str | None:
        """The folder the images were read from when the cache was made."""
        return self.attrs.get("dataset_root") or None

    @property
    def provenance(self) -> dict:
        return self.attrs.get("provenance", {})

    @property
    def imported(self) -> dict | None:
        """What an imported cache (``vlmprobe cache import``) was made from; None when extracted."""
        return self.attrs.get("imported")

    @property
    def merged_from(self) -> list[str] | None:
        return self.attrs.get("merged_from")

    @property
    def tap(self) -> str | None:
        """The tap in ``embeddings``: the one picked by :meth:`with_tap`, else the entry's own."""
        return self.attrs.get("tap") or self.entry.get("tap")

    def with_tap(self, tap: str) -> "Cache":
        """This cache with ``tap``'s embeddings in ``embeddings``, named ``<model>@<tap>`` so
        that stage outputs and table rows of two taps stay apart (the entry's tap: unchanged)."""
        if tap == self.tap:
            return self
        if tap not in self.taps:
            raise VlmprobeError(f"{self.path}: no tap {tap!r}; it holds "
                                f"{', '.join([str(self.tap), *self.taps])}. Re-run `vlmprobe "
                                f"extract --tap {','.join([*self.taps, tap])}` to add it.")
        return replace(self, embeddings=self.taps[tap], model=f"{self.model}@{tap}",
                       attrs=dict(self.attrs, tap=tap))

    def tap_views(self, tap: str | None) -> list["Cache"]:
        """What a stage's ``--tap`` selects: None the entry's tap, "all" every tap stored,
        else that one tap."""
        if tap is None:
            return [self]
        if tap == "all":
            return [self, *(self.with_tap(t) for t in self.taps)]
        return [self.with_tap(tap)]

    @property
    def view_tag(self) -> str:
        """"@level1", "@float" etc. for a cache of a non-default view (label view or pixel
        choices, ``<model>@<view>.h5``), else "": stage outputs carry it, so two views' outputs
        never overwrite each other."""
        tag = Path(self.path or "").stem.partition("@")[2]
        return f"@{tag}" if tag else ""

    @property
    def output_name(self) -> str:
        """``<model><view_tag>``: what every stage output of this cache is named after."""
        return f"{self.model}{self.view_tag}"

    @property
    def shard(self) -> str:
        return str(self.attrs.get("shard", ""))

    @property
    def baseline(self) -> bool:
        return bool(self.attrs.get("baseline", False))

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def empty_classes(self) -> list[str]:
        """Classes of ``class_names`` with no image in this cache, which the class view drops."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return [name for name, n in zip(self.class_names, counts) if n == 0]

    def label_view(self, column: str | None) -> tuple[np.ndarray, list[str], str]:
        """Labels to probe: the class (``column=None``) or a metadata column, as indices + names.

        Classes the cache holds no image of (ISIC 2019's UNK, empty in its training ground
        truth) are left out of the class view, the others renumbered in order: a probe cannot
        learn a class without samples, and keeping it would stop the probe (or, renamed by
        ``--classes``, part the dataset from the paper's tables). :meth:`empty_classes` names them.
        """
        if column is None:
            present = np.flatnonzero(np.bincount(self.labels, minlength=len(self.class_names)))
            if len(present) == len(self.class_names):
                return self.labels, self.class_names, "class"
            renumber = np.full(len(self.class_names), -1, np.int64)
            renumber[present] = np.arange(len(present))
            return renumber[self.labels], [self.class_names[i] for i in present], "class"
        if column not in self.metadata:
            raise VlmprobeError(f"{self.path}: no metadata column {column!r}; columns: "
                                f"{', '.join(sorted(self.metadata)) or 'none'}.")
        values = np.asarray(self.metadata[column], dtype=object)
        names = sorted({str(v) for v in values})
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[str(v)] for v in values], dtype=np.int64), names, column


def cache_key(encoder_desc: dict, dataset_fingerprint: str, intensity_pipeline: str,
              precision: str = "fp32", taps: list[str] = ()) -> str:
    """What a cache depends on; a request with another key must not be served this cache.
    ``taps``: the further taps stored beside the entry's own (none: the key of v2)."""
    request = {"schema": KEY_SCHEMA, "encoder": encoder_desc,
               "dataset_fingerprint": dataset_fingerprint, "intensity": intensity_pipeline,
               "precision": precision}
    if taps:
        request["taps"] = sorted(taps)
    payload = json.dumps(request, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def embeddings_sha256(embeddings: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(embeddings, np.float32).tobytes()).hexdigest()


def _json_attrs(cache: Cache) -> dict:
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in cache.attrs.items()}


def write_cache(path: Path, cache: Cache) -> Path:
    """Write ``cache`` to ``path`` whole or not at all (beside, then renamed)."""
    from .chunks import written_beside

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_beside(path, "write cache") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=np.asarray(cache.embeddings, np.float32))
        f.create_dataset("labels", data=np.asarray(cache.labels, np.int64))
        f.create_dataset("relpaths", data=cache.relpaths, dtype=_STR)
        meta = f.create_group("meta")
        for col, values in cache.metadata.items():
            meta.create_dataset(col, data=[str(v) for v in values], dtype=_STR)
        files = f.create_group("files")
        files.create_dataset("relpath", data=cache.files["relpath"], dtype=_STR)
        files.create_dataset("size", data=np.asarray(cache.files["size"], np.int64))
        files.create_dataset("digest", data=cache.files["digest"], dtype=_STR)
        skipped = f.create_group("skipped")
        for k in ("relpath", "error"):
            skipped.create_dataset(k, data=cache.skipped[k], dtype=_STR)
        if cache.taps:
            taps = f.create_group("taps")
            for name, emb in cache.taps.items():
                taps.create_dataset(name, data=np.asarray(emb, np.float32)).attrs[
                    "sha256"] = embeddings_sha256(emb)
        f.attrs.update({"schema_version": SCHEMA_VERSION, "model": cache.model,
                        "dataset": cache.dataset, "class_names": json.dumps(cache.class_names),
                        "dataset_fingerprint": cache.dataset_fingerprint,
                        "cache_key": cache.cache_key, "embed_dim": cache.embed_dim,
                        "embeddings_sha256": embeddings_sha256(cache.embeddings)})
        f.attrs.update(_json_attrs(cache))
    return path


def _strings(ds) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]]


_CORE_ATTRS = {"schema_version", "model", "dataset", "class_names", "dataset_fingerprint",
               "cache_key", "embed_dim", "embeddings_sha256"}


def _checked(path: Path, ds) -> np.ndarray:
    emb = ds[()]
    if embeddings_sha256(emb) != str(ds.attrs["sha256"]):
        raise VlmprobeError(f"{path} is corrupt: its {ds.name} embeddings do not match their "
                            "checksum. Delete it and re-run `vlmprobe extract`.")
    return emb


def read_cache(path: str | Path, tap: str | None = None) -> Cache:
    """The cache at ``path``; ``tap`` picks one of its taps for ``embeddings`` (see
    :meth:`Cache.with_tap`), None the entry's own."""
    cache = _read(Path(path))
    return cache.with_tap(tap) if tap else cache


def _read(path: Path) -> Cache:
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", -1))
            if version not in READABLE_VERSIONS:
                raise VlmprobeError(f"{path} has cache schema version {version}; this vlmprobe "
                                    f"reads versions {READABLE_VERSIONS}. Re-run `vlmprobe "
                                    "extract --force` to rewrite it.")
            embeddings = f["embeddings"][()]
            expected = f.attrs.get("embeddings_sha256")
            if expected is not None and embeddings_sha256(embeddings) != str(expected):
                raise VlmprobeError(f"{path} is corrupt: its embeddings do not match their "
                                    "checksum. Delete it and re-run `vlmprobe extract`.")
            relpaths = _strings(f["relpaths"])
            outside = next((r for r in relpaths if PurePosixPath(r).is_absolute()
                            or ".." in PurePosixPath(r).parts), None)
            if outside is not None:  # stages read images (RISE, thumbnails) by these paths
                raise VlmprobeError(f"{path}: image path {outside!r} leaves the dataset root; "
                                    "vlmprobe writes relative paths only, so the file was not "
                                    "written by vlmprobe or was altered. Do not use it.")
            return Cache(
                embeddings=embeddings, labels=f["labels"][()],
                relpaths=relpaths,
                class_names=json.loads(f.attrs["class_names"]),
                model=check_name(str(f.attrs["model"]), "model", str(path)),
                dataset=check_name(str(f.attrs["dataset"]), "dataset", str(path)),
                dataset_fingerprint=str(f.attrs["dataset_fingerprint"]),
                cache_key=str(f.attrs["cache_key"]),
                metadata={k: _strings(v) for k, v in f["meta"].items()},
                files={"relpath": _strings(f["files/relpath"]), "size": f["files/size"][()].tolist(),
                       "digest": _strings(f["files/digest"])},
                skipped={k: _strings(f["skipped"][k]) for k in ("relpath", "error")},
                attrs={k: json.loads(v) for k, v in f.attrs.items() if k not in _CORE_ATTRS},
                path=path, taps={name: _checked(path, ds) for name, ds in f.get("taps", {}).items()},
                schema_version=version,
            )
    except (OSError, KeyError, ValueError, RuntimeError) as e:  # h5py's ways of saying "damaged"
        raise VlmprobeError(f"{path} is not a readable vlmprobe cache ({e}). Delete it and re-run "
                            "`vlmprobe extract`.") from None


def read_cache_key(path: Path) -> str | None:
    """The key of an existing cache without loading its arrays (None if unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs["cache_key"])
    except (OSError, KeyError):
        return None


def describe_fingerprint_difference(a: Cache, b: Cache) -> str:
    """Which files differ between two caches of one dataset (for refusing mixed caches)."""
    fa = dict(zip(a.files["relpath"], zip(a.files["size"], a.files["digest"])))
    fb = dict(zip(b.files["relpath"], zip(b.files["size"], b.files["digest"])))
    only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())
    changed = sorted(k for k in fa.keys() & fb.keys() if fa[k] != fb[k])
    parts = []
    for label, items in (("only in " + str(a.path), only_a), ("only in " + str(b.path), only_b),
                         ("content differs", changed)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} file(s) {label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts) or "same files, different metadata"
