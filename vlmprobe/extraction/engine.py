"""Extraction: embed every image of a dataset with one model, into one HDF5 cache.

Decoding and the official transform run in DataLoader workers while the model runs
(:mod:`.batches`); an image that cannot be decoded is recorded (path + error) and left out, never
silently dropped. Each batch is saved as its own chunk file (:mod:`vlmprobe.cache.chunks`), so a
killed run continues where it stopped, and the cache is assembled only when every chunk exists.
Shards of one extraction are joined by :mod:`.shards`.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cache import Cache, cache_dir, cache_key, cache_path, read_cache, read_cache_key, write_cache
from ..cache.chunks import Chunk, WorkDir, WriterLock, chunk_batches
from ..data import ImageDataset, load_dataset
from ..encoders import Encoder, load_encoder
from ..encoders.transforms import fast_transform, input_transform
from ..messages import progress_bar
from ..provenance import provenance
from ..registry import get_model_entry
from ..validation import VlmprobeError, config, with_options
from .batches import (_channels_last, _collate, _DecodedImages, _first_sample, auto_batch_size,
                      check_precision, default_workers, encode)
from .shards import _merge_if_complete, parse_shard, shard_path

log = logging.getLogger(__name__)


@config
class ExtractConfig:
    """How an extraction runs. ``precision``, ``fast_decode`` and ``taps`` change the embeddings
    and are part of the cache key; the others change only speed and memory."""

    batch_size: int | str = 32  # or "auto": GPU the largest that fits, CPU the fastest (timed)
    device: str = "auto"
    num_workers: int | None = None  # decoding processes (None: one per core but one, at most 4)
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast; fp16 needs a GPU)
    shard: str | tuple[int, int] | None = None  # "i/n": every n-th batch into a shard cache
    fast_decode: bool = False  # the first resize by torch's uint8 kernel (encoders.transforms)
    taps: str | tuple[str, ...] | list[str] | None = None  # further taps of the same pass


@dataclass
class ExtractResult:
    """What :func:`extract` did, and where the cache is."""

    path: Path
    status: str  # "written" | "up to date" | "shard written"
    n_images: int
    n_skipped: int
    merged: Path | None = None  # the whole cache, when this shard completed a set

    def read(self, tap: str | None = None) -> Cache:
        """The cache written (the merged one when this shard completed a set)."""
        return read_cache(self.merged or self.path, tap)

    def summary(self) -> str:
        skipped = (f", {self.n_skipped} unreadable file(s) skipped and recorded"
                   if self.n_skipped else "")
        merged = f"; all shards present, merged into {self.merged}" if self.merged else ""
        return f"Cache {self.status}: {self.path} ({self.n_images} images{skipped}){merged}"


def _explain_key_mismatch(path: Path, encoder: Encoder, fingerprint: str, pipeline: str,
                          precision: str, extra_taps: list[str]) -> str:
    old = read_cache(path)
    reasons = []
    if sorted(old.taps) != sorted(extra_taps):
        reasons.append(f"further taps {sorted(old.taps) or 'none'} -> "
                       f"{sorted(extra_taps) or 'none'}")
    if old.schema_version == 1:
        reasons.append("written by an older vlmprobe (cache schema 1)")
    if old.dataset_fingerprint != fingerprint:
        reasons.append(f"dataset files changed (fingerprint {old.dataset_fingerprint[:12]} -> "
                       f"{fingerprint[:12]})")
    if old.weights_sha256 != encoder.weights_sha256_:
        reasons.append("model weights differ")
    if old.entry != json.loads(json.dumps(encoder.entry.to_dict(), default=str)):
        reasons.append("registry entry (tap, preprocessing or source) differs")
    if old.intensity_pipeline != pipeline:
        reasons.append("intensity pipeline (or --fast-decode) differs")
    if old.schema_version > 1 and old.precision != precision:
        reasons.append(f"precision {old.precision} -> {precision}")
    return "; ".join(reasons) or "vlmprobe version or transform changed"


def _assemble(data: ImageDataset, chunks: list[Chunk], base: dict) -> tuple[Cache, int]:
    """The cache of the samples in ``chunks`` (chunk order = sample order)."""
    relpaths = [s.relpath for s in data.samples]
    order = [int(i) for c in chunks for i in c.idx]
    skipped = [(int(i), e) for c in chunks for i, e in zip(c.failed_idx, c.failed_error)]
    dim = base["attrs"]["encoder"]["entry"]["embed_dim"]
    emb = [c.embeddings for c in chunks if len(c.idx)]
    taps = {t: np.concatenate([c.taps[t] for c in chunks])
            for t in (chunks[0].taps if chunks else ())}
    cache = Cache(
        embeddings=(np.concatenate(emb).astype(np.float32) if emb
                    else np.zeros((0, dim), np.float32)),
        labels=np.array([data.samples[i].label for i in order], dtype=np.int64),
        relpaths=[relpaths[i] for i in order],
        metadata={col: [data.samples[i].metadata.get(col, "") for i in order]
                  for col in data.metadata_columns},
        skipped={"relpath": [relpaths[i] for i, _ in skipped], "error": [e for _, e in skipped]},
        taps=taps, **base,
    )
    return cache, len(skipped)


def extract(model: str, dataset: str, root: str | Path | None = None,
            out: str | Path | None = None, config: ExtractConfig | None = None, *,
            dataset_options: dict | None = None, force: bool = False, progress: bool = True,
            trust_remote_code: bool | None = None, **options) -> ExtractResult:
    """Embed ``dataset`` with ``model``; writes ``<out>/<dataset>/<model>.h5`` (``<model>@<view>.h5``
    for a non-default label view, see :func:`vlmprobe.cache.cache_path`) and returns it.

    ``config`` (:class:`ExtractConfig`) says how it runs; keyword ``options`` change single
    settings of it (``extract(m, d, batch_size="auto", device="cuda")``).

    Re-running after a crash continues from the chunks on disk. ``batch_size="auto"`` picks
    one (see :func:`auto_batch_size`); a resumed run keeps the batch size it started with.
    ``dataset_options``: :func:`~vlmprobe.data.load_dataset` choices (size, dicom_window,
    intensity, label_level, class_subset), recorded in the cache's dataset entry and key;
    ``intensity="float"`` (:func:`float_transform`) and a non-default DICOM window also name the
    cache (``<model>@float.h5``, ``<model>@window=minmax.h5``), beside the default one.
    ``trust_remote_code``: the user's opt-in for entries that declare hub code (None: read
    ``$VLMPROBE_TRUST_REMOTE_CODE``).
    ``taps``: further taps (the family's names, a list or "a,b") computed in the same forward
    pass as the entry's own and stored beside it (``/taps/<tap>``, see :mod:`vlmprobe.cache`).
    """
    cfg = with_options(config or ExtractConfig(), options)
    batch_size, device, num_workers, precision = (cfg.batch_size, cfg.device, cfg.num_workers,
                                                  cfg.precision)
    shard, fast_decode, taps = cfg.shard, cfg.fast_decode, cfg.taps
    entry = get_model_entry(model)
    data = load_dataset(dataset, root, **(dataset_options or {}))
    relpaths = [s.relpath for s in data.samples]
    final = cache_path(cache_dir(out), dataset, model, data.cache_view)
    part = parse_shard(shard)
    target = shard_path(final, *part) if part else final
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise VlmprobeError(f"--batch-size {batch_size!r}: give a positive integer or 'auto'.")

    log.info(f"Fingerprinting {len(relpaths)} files under {data.root} ...")
    sizes, digests, fingerprint = data.fingerprint()  # a label level / class subset included
    local_rank = os.environ.get("LOCAL_RANK")
    if part and local_rank is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(local_rank) % torch.cuda.device_count()}"  # one GPU per torchrun rank
    encoder = load_encoder(entry, device, trust_remote_code=trust_remote_code)
    check_precision(precision, encoder.device)
    desc = encoder.describe()
    as_float = data.entry.intensity == "float"
    transform = input_transform(encoder, data.entry.intensity)  # refuses float if it cannot
    fast = fast_transform(encoder.transform_) if fast_decode and not as_float else None
    if fast_decode and fast is None:
        log.warning(f"--fast-decode has no effect for {model}: "
                      + ("--intensity float resizes float tensors already." if as_float else
                         "its transform does not start with a torchvision bilinear/bicubic "
                         "Resize; decoding exactly."))
    pipeline = data.intensity_pipeline  # derived from every sample: compute once
    if fast:
        pipeline += " + fast decode (first resize by torch's uint8 antialiased kernel)"
    if as_float:
        pipeline += (" -> official transform on float tensors (torch antialiased resize "
                     "clamped to [0, 1], crop, normalise)")
    if isinstance(taps, str):
        taps = [t.strip() for t in taps.split(",") if t.strip()]
    extra_taps = [t for t in dict.fromkeys(taps or []) if t != entry.tap]
    key = cache_key(desc, fingerprint, pipeline, precision, extra_taps)
    for existing in (final, target):
        if existing.exists():
            old_key = read_cache_key(existing)
            if old_key == key:
                WorkDir(target).clear()
                old = read_cache(existing)
                return ExtractResult(existing, "up to date", len(old.relpaths),
                                     len(old.skipped["relpath"]))
            if not force:
                why = (_explain_key_mismatch(existing, encoder, fingerprint, pipeline, precision,
                                             extra_taps)
                       if old_key is not None else "it is not a readable cache")
                raise VlmprobeError(f"{existing} exists but was made from different inputs: {why}. "
                                    "Pass --force to overwrite it, or --out another directory.")

    images = _DecodedImages(data, fast or transform)
    channels_last = _channels_last(encoder)
    all_taps = [entry.tap, *extra_taps]
    dims = {entry.tap: entry.embed_dim}
    if extra_taps:  # one image through every tap now: an unsupported tap fails before any work
        one = encode(encoder, _first_sample(images)[None], precision, channels_last, all_taps)
        dims = {t: e.shape[1] for t, e in one.items()}
    with WriterLock(target):
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # a writer killed mid-rename
            stale.unlink()
        work = WorkDir(target)
        want = {"cache_key": key, "n": len(data), "shard": list(part or (0, 1))}
        resumed = work.resumable(want)
        if resumed:
            bs = resumed["batch_size"]
            if batch_size not in ("auto", bs):
                log.warning(f"Resuming with batch size {bs} (the interrupted run's), "
                              f"not {batch_size}, so the batch boundaries stay the same.")
        elif batch_size == "auto":
            bs = auto_batch_size(encoder, _first_sample(images), precision, channels_last)
            log.info(f"--batch-size auto: {bs} on {encoder.device}")
        else:
            bs = batch_size
        work.start(dict(want, batch_size=bs))
        i, n = part or (0, 1)
        mine = [k for k in range(math.ceil(len(data) / bs)) if k % n == i]
        todo = sorted(set(mine) - work.done_verified(log.warning))
        if len(todo) < len(mine):
            log.info(f"Resuming: {len(mine) - len(todo)} of {len(mine)} chunks already done "
                          f"in {work.path}")
        batches = chunk_batches(len(data), bs, todo)
        loader = torch.utils.data.DataLoader(
            images, batch_sampler=batches, collate_fn=_collate,
            num_workers=default_workers() if num_workers is None else num_workers,
            pin_memory=encoder.device.type == "cuda")
        with progress_bar(f"extract {model} / {dataset}", sum(map(len, batches)),
                          enabled=progress) as advance:
            for idx, pixels, failed, first in loader:
                emb = (encode(encoder, pixels, precision, channels_last, all_taps)
                       if pixels is not None
                       else {t: np.zeros((0, d), np.float32) for t, d in dims.items()})
                work.write(first // bs, Chunk(np.array(idx, np.int64), emb[entry.tap],
                                              np.array([j for j, _ in failed], np.int64),
                                              [e for _, e in failed],
                                              {t: emb[t] for t in extra_taps}))
                advance(len(idx) + len(failed))

        phantom_file = data.root / "phantom.json"
        base = dict(
            class_names=data.class_names, model=model, dataset=dataset,
            dataset_fingerprint=fingerprint, cache_key=key,
            files={"relpath": relpaths, "size": sizes, "digest": digests},
            attrs={"baseline": entry.baseline, "encoder": desc, "intensity_pipeline": pipeline,
                   "dataset_entry": data.entry.__dict__, "dataset_root": str(data.root),
                   "phantom": json.loads(phantom_file.read_text()) if phantom_file.is_file() else "",
                   "precision": precision, "batch_size": bs,
                   "shard": f"{i}/{n}" if part else "",
                   "provenance": provenance(stage="extract", batch_size=bs,
                                            device=str(encoder.device), precision=precision,
                                            channels_last=channels_last,
                                            fast_decode=fast is not None)})
        cache, n_skipped = _assemble(data, [work.read(k) for k in mine], base)
        if not part and not cache.relpaths:
            first_err = cache.skipped["relpath"][0], cache.skipped["error"][0]
            raise VlmprobeError(f"No image under {data.root} could be decoded; first error: "
                                f"{first_err[0]}: {first_err[1]}")
        write_cache(target, cache)
        work.clear()
    for rel, err in zip(cache.skipped["relpath"], cache.skipped["error"]):
        log.warning(f"skipped unreadable image {data.root / rel}: {err}")
    if not part:
        return ExtractResult(target, "written", len(cache.relpaths), n_skipped)
    return ExtractResult(target, "shard written", len(cache.relpaths), n_skipped,
                         _merge_if_complete(final, n))
