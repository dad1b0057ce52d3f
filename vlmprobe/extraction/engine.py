"""Extraction: embed every image of a dataset with one model, into one HDF5 cache.

Decoding and the official transform run in DataLoader workers (:mod:`.batches`); on a CPU the
workers run the model on their own batches too, on a GPU the model runs here and keeps a batch
queued while the previous one's embeddings come back (:mod:`.plan`; nvJPEG decoding with
``--fast-decode``, :mod:`.gpu_decode`). An image that cannot be decoded is recorded (path +
error) and left out, never silently dropped. Each batch is saved as its own chunk file
(:mod:`vlmprobe.cache.chunks`), so a killed run continues where it stopped, and the cache is
assembled only when every chunk exists. Shards of one extraction are joined by :mod:`.shards`.
Every run records where its wall time went (:mod:`.profile`; ``extract --profile`` prints it).

:func:`extract` is four steps: :func:`_request` (what is asked: dataset, encoder, pipeline, cache
key), :func:`_existing` (an up-to-date cache is served, another one refused), :func:`_embed`
(the chunks, under the writer lock) and :func:`_consolidate` (the cache from its chunks).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cache import Cache, cache_dir, cache_key, cache_path, read_cache, read_cache_key, write_cache
from ..cache.chunks import Chunk, ChunkWriter, WorkDir, WriterLock, chunk_batches
from ..data import ImageDataset, load_dataset
from ..data.decode import sample_kind
from ..devices import torch_threads
from ..encoders import Encoder, load_encoder
from ..encoders.transforms import fast_transform, input_transform
from ..messages import progress_bar
from ..provenance import provenance
from ..registry import DatasetEntry, ModelEntry, get_model_entry
from ..validation import VlmprobeError, config, with_options
from .batches import (_channels_last, _Collate, _DecodedImages, _first_sample,
                      auto_batch_size, check_precision, encode, encode_async)
from .gpu_decode import (GPU_PIPELINE, JpegBytes, batch_pixels, choose_gpu_decode,
                         gpu_decode_record)
from .plan import Plan, available_memory, choose_plan, peak_memory_of, usable_cores
from .profile import Profile, profile_lines
from .shards import _merge_if_complete, parse_shard, shard_path

log = logging.getLogger(__name__)


@config
class ExtractConfig:
    """How an extraction runs. ``precision``, ``fast_decode`` and ``taps`` change the embeddings
    and are part of the cache key; the others change only speed and memory."""

    # None: 32 images, or 1 whole volume (a CT volume's forward alone takes gigabytes);
    # "auto": GPU the largest that fits, CPU the fastest (timed)
    batch_size: int | str | None = None
    device: str = "auto"
    # None: the machine decides (.plan: on a CPU one worker per core runs decode + model);
    # a number: the model here beside that many decoding workers
    num_workers: int | None = None
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast; fp16 needs a GPU)
    shard: str | tuple[int, int] | None = None  # "i/n": every n-th batch into a shard cache
    fast_decode: bool = False  # the first resize by torch's uint8 kernel; on a GPU, nvJPEG
    taps: str | tuple[str, ...] | list[str] | None = None  # further taps of the same pass


@dataclass
class ExtractResult:
    """What :func:`extract` did, where the cache is, and where the wall time went."""

    path: Path
    status: str  # "written" | "up to date" | "shard written"
    n_images: int
    n_skipped: int
    merged: Path | None = None  # the whole cache, when this shard completed a set
    profile: dict | None = None  # where the wall time went (:meth:`Profile.as_dict`)

    def read(self, tap: str | None = None) -> Cache:
        """The cache written (the merged one when this shard completed a set)."""
        return read_cache(self.merged or self.path, tap)

    def summary(self) -> str:
        skipped = (f", {self.n_skipped} unreadable file(s) skipped and recorded"
                   if self.n_skipped else "")
        merged = f"; all shards present, merged into {self.merged}" if self.merged else ""
        return f"Cache {self.status}: {self.path} ({self.n_images} images{skipped}){merged}"

    def profile_lines(self) -> list[str]:
        """The split of the wall time, as ``extract --profile`` prints it."""
        return profile_lines(self.profile) if self.profile else []


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


def _fingerprint_and_load(data: ImageDataset, entry, device: str, trust_remote_code,
                          prof: Profile) -> tuple[list[int], list[str], str, Encoder]:
    """The dataset's fingerprint, hashed on a thread while the model loads: both are fixed
    costs of every run, and hashing (file reads, blake2b) leaves the GIL to the loading."""
    def hash_files():
        with prof.phase("fingerprint"):
            return data.fingerprint()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="vlmprobe-fingerprint") as pool:
        hashing = pool.submit(hash_files)
        with prof.phase("model load"):
            encoder = load_encoder(entry, device, trust_remote_code=trust_remote_code)
        sizes, digests, fingerprint = hashing.result()
    prof.overlap = prof.wall["fingerprint"] + prof.wall["model load"] - (time.perf_counter() - t0)
    return sizes, digests, fingerprint, encoder


def _plan(encoder: Encoder, sample, images, bs: int, n_batches: int, num_workers: int | None,
          precision: str, channels_last: bool) -> Plan:
    """:func:`choose_plan` fed with what it weighs, measured here: on a CPU one batch's
    forward memory at one thread (from four images); on a GPU a worker's seconds per image
    against the forward's."""
    kind = encoder.device.type
    plan = choose_plan(kind, bs, num_workers, n_batches=n_batches)
    if num_workers is not None or n_batches == 0 or (kind == "cpu" and not plan.model_in_workers):
        return plan
    if kind == "cpu":
        k = min(bs, 4)
        with torch_threads(1):
            peak = peak_memory_of(lambda: encode(encoder, sample.expand(k, *sample.shape).clone(),
                                                 precision))
        return choose_plan(kind, bs, n_batches=n_batches, memory_free=available_memory(),
                           batch_memory=peak and peak * bs // k)
    probe = range(min(8, len(images)))
    with torch_threads(1):
        t0 = time.perf_counter()
        for i in probe:
            images[i]
        worker_s = (time.perf_counter() - t0) / len(probe)
    x = sample.expand(bs, *sample.shape).clone()
    encode(encoder, x, precision, channels_last)  # warm: kernels chosen, memory cached
    t0 = time.perf_counter()
    encode(encoder, x, precision, channels_last)
    forward_s = (time.perf_counter() - t0) / bs
    return choose_plan(kind, bs, n_batches=n_batches, worker_s=worker_s, forward_s=forward_s)


@dataclass
class _Request:
    """One :func:`extract` call, resolved: the listing, the encoder, how pixels reach it, and the
    cache key that names all of it."""

    entry: ModelEntry
    data: ImageDataset
    final: Path                     # the cache
    target: Path                    # what this process writes: the cache, or its shard
    part: tuple[int, int] | None    # (i, n) for shard i of n
    files: dict                     # relpath, size, digest of every listed file
    fingerprint: str
    encoder: Encoder
    desc: dict
    transform: object               # the official transform (or its float version)
    fast: object | None             # --fast-decode's transform, where it applies
    gpu: bool                       # JPEGs decoded by nvJPEG
    pipeline: str
    extra_taps: list[str]
    key: str

    @property
    def taps(self) -> list[str]:
        return [self.entry.tap, *self.extra_taps]


def check_input_kind(entry: ModelEntry, data: ImageDataset) -> None:
    """A 3-D encoder takes whole volumes only and a 2-D encoder none: refused before the model
    loads, so nothing is computed or written for a pairing that cannot work."""
    whole = [s.relpath for s in data.samples if sample_kind(s.relpath) == "volume3d"]
    if entry.preprocess.is_volume and len(whole) < len(data):
        other = next(s.relpath for s in data.samples if sample_kind(s.relpath) != "volume3d")
        raise VlmprobeError(f"Model {entry.name!r} is a 3-D CT encoder and reads whole volumes, "
                            f"but {data.root / other} is a 2-D sample of {data.entry.name!r}. "
                            "Give the dataset `volume: whole` (NIfTI files or DICOM series "
                            "folders), or use a 2-D model.")
    if whole and not entry.preprocess.is_volume:
        raise VlmprobeError(f"Model {entry.name!r} reads 2-D images, but {data.root / whole[0]} "
                            f"is a whole volume ({data.entry.name!r} has `volume: whole`). Use a "
                            "3-D encoder (merlin, astra), or `volume: slices` for axial slices.")


def _request(model: str | ModelEntry, dataset: str | DatasetEntry | ImageDataset, root, out,
             cfg: ExtractConfig, dataset_options: dict | None, trust_remote_code: bool | None,
             prof: Profile, registry=(), datasets=()) -> _Request:
    entry = model if isinstance(model, ModelEntry) else get_model_entry(model, registry=registry)
    with prof.phase("listing"):
        if isinstance(dataset, ImageDataset):
            if dataset_options or root is not None:
                raise VlmprobeError("A listed dataset (ImageDataset) is used as it is: pass its "
                                    "key or entry to change root or options.")
            data = dataset
        else:
            data = load_dataset(dataset, root, datasets=datasets, **(dataset_options or {}))
    check_input_kind(entry, data)
    final = cache_path(cache_dir(out), data.entry.name, entry.name, data.cache_view)
    part = parse_shard(cfg.shard)
    if cfg.batch_size not in ("auto", None) and (not isinstance(cfg.batch_size, int)
                                                 or cfg.batch_size < 1):
        raise VlmprobeError(f"--batch-size {cfg.batch_size!r}: give a positive integer or 'auto'.")
    log.info(f"Fingerprinting {len(data)} files under {data.root} ...")
    device, local_rank = cfg.device, os.environ.get("LOCAL_RANK")
    if part and local_rank is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(local_rank) % torch.cuda.device_count()}"  # one GPU per torchrun rank
    # the fingerprint covers a label level / class subset too
    sizes, digests, fingerprint, encoder = _fingerprint_and_load(data, entry, device,
                                                                 trust_remote_code, prof)
    with prof.phase("setup"):
        check_precision(cfg.precision, encoder.device)
        as_float = data.entry.intensity == "float"
        transform = input_transform(encoder, data.entry.intensity)  # refuses float if it cannot
        fast = fast_transform(encoder.transform_) if cfg.fast_decode and not as_float else None
        if cfg.fast_decode and fast is None:
            log.warning(f"--fast-decode has no effect for {entry.name}: "
                        + ("--intensity float resizes float tensors already." if as_float else
                           "its transform does not start with a torchvision bilinear/bicubic "
                           "Resize; decoding exactly."))
        gpu, not_gpu = choose_gpu_decode(bool(fast), encoder, data)
        if fast and not gpu and encoder.device.type == "cuda":
            log.warning(f"Decoding on the CPU: {not_gpu}.")
        pipeline = data.intensity_pipeline  # derived from every sample: compute once
        if gpu:
            pipeline += GPU_PIPELINE
        elif fast:
            pipeline += " + fast decode (first resize by torch's uint8 antialiased kernel)"
        if as_float:
            pipeline += (" -> official transform on float tensors (torch antialiased resize "
                         "clamped to [0, 1], crop, normalise)")
        taps = cfg.taps
        if isinstance(taps, str):
            taps = [t.strip() for t in taps.split(",") if t.strip()]
        extra_taps = [t for t in dict.fromkeys(taps or []) if t != entry.tap]
        desc = encoder.describe()
        key = cache_key(desc, fingerprint, pipeline, cfg.precision, extra_taps)
    return _Request(entry, data, final, shard_path(final, *part) if part else final, part,
                    {"relpath": [s.relpath for s in data.samples], "size": sizes,
                     "digest": digests}, fingerprint, encoder, desc, transform, fast, gpu,
                    pipeline, extra_taps, key)


def _existing(req: _Request, precision: str, force: bool, prof: Profile) -> ExtractResult | None:
    """An existing cache (or shard) made from the same inputs is served as it is; one made from
    others is refused with what differs, unless ``force``."""
    for existing in (req.final, req.target):
        if not existing.exists():
            continue
        old_key = read_cache_key(existing)
        if old_key == req.key:
            WorkDir(req.target).clear()
            old = read_cache(existing)
            return ExtractResult(existing, "up to date", len(old.relpaths),
                                 len(old.skipped["relpath"]), profile=prof.finish().as_dict())
        if not force:
            why = (_explain_key_mismatch(existing, req.encoder, req.fingerprint, req.pipeline,
                                         precision, req.extra_taps)
                   if old_key is not None else "it is not a readable cache")
            raise VlmprobeError(f"{existing} exists but was made from different inputs: {why}. "
                                "Pass --force to overwrite it, or --out another directory.")
    return None


def _embed(req: _Request, cfg: ExtractConfig, progress: bool, prof: Profile):
    """Every batch this process owns into its chunk file (those already on disk and whole are
    kept: a resumed run); returns (work dir, the chunks this process owns, batch size, plan,
    channels_last). Runs under the target's writer lock."""
    encoder, data, precision = req.encoder, req.data, cfg.precision
    prof.begin("setup")
    decoded = _DecodedImages(data, req.fast or req.transform)  # pixels as the model takes them
    images = JpegBytes(data) if req.gpu else decoded
    sample = None
    channels_last = _channels_last(encoder)
    dims = {req.entry.tap: req.entry.embed_dim}
    if req.extra_taps:  # one image through every tap now: an unsupported tap fails before any work
        sample = _first_sample(decoded)
        one = encode(encoder, sample[None], precision, channels_last, req.taps)
        dims = {t: e.shape[1] for t, e in one.items()}
    work = WorkDir(req.target)
    want = {"cache_key": req.key, "n": len(data), "shard": list(req.part or (0, 1))}
    resumed = work.resumable(want)
    if resumed:
        bs = resumed["batch_size"]
        if cfg.batch_size not in ("auto", None, bs):
            log.warning(f"Resuming with batch size {bs} (the interrupted run's), not "
                        f"{cfg.batch_size}, so the batch boundaries stay the same.")
    elif cfg.batch_size == "auto":
        sample = _first_sample(decoded) if sample is None else sample
        threads = 1 if cfg.num_workers is None and usable_cores() > 1 else torch.get_num_threads()
        with torch_threads(threads):  # on a CPU, timed at the threads the workers will use
            bs = auto_batch_size(encoder, sample, precision, channels_last)
        log.info(f"--batch-size auto: {bs} on {encoder.device}")
    else:
        bs = cfg.batch_size or (1 if req.entry.preprocess.is_volume else 32)
    work.start(dict(want, batch_size=bs))
    i, n = req.part or (0, 1)
    mine = [k for k in range(math.ceil(len(data) / bs)) if k % n == i]
    todo = sorted(set(mine) - work.done_verified(log.warning))
    if len(todo) < len(mine):
        log.info(f"Resuming: {len(mine) - len(todo)} of {len(mine)} chunks already done in "
                 f"{work.path}")
    batches = chunk_batches(len(data), bs, todo)
    if cfg.num_workers is None and batches and sample is None:
        sample = _first_sample(decoded)
    plan = _plan(encoder, sample, images, bs, len(batches), cfg.num_workers, precision,
                 channels_last)
    prof.plan, prof.n_workers = plan.why, plan.workers
    in_workers = (functools.partial(encode, encoder, precision=precision, taps=req.taps)
                  if plan.model_in_workers else None)
    loader = torch.utils.data.DataLoader(
        images, batch_sampler=batches, collate_fn=_Collate(not req.gpu, in_workers),
        num_workers=plan.workers, prefetch_factor=plan.prefetch,
        multiprocessing_context="fork" if plan.model_in_workers else None,
        pin_memory=encoder.device.type == "cuda")
    prof.end("setup")

    def finish(batch, pending) -> None:
        with prof.phase("forward"):  # on a GPU: waiting for the copy of the embeddings
            emb = (batch.embeddings if batch.embeddings is not None
                   else pending.numpy() if pending is not None
                   else {t: np.zeros((0, d), np.float32) for t, d in dims.items()})
        with prof.phase("chunk writes"):
            writer.write(batch.first // bs, Chunk(
                np.array(batch.idx, np.int64), emb[req.entry.tap],
                np.array([j for j, _ in batch.failed], np.int64),
                [e for _, e in batch.failed], {t: emb[t] for t in req.extra_taps},
                batch.cpu_decoded))
        advance(len(batch.idx) + len(batch.failed))

    with progress_bar(f"extract {req.entry.name} / {data.entry.name}",
                      sum(map(len, batches)), enabled=progress) as advance, \
            ChunkWriter(work) as writer:
        queued = None  # the previous batch, its embeddings still on their way from the GPU
        with prof.phase("waiting for batches"):  # workers start here
            stream = iter(loader) if batches else iter(())
        while True:
            with prof.phase("waiting for batches"):
                batch = next(stream, None)
            if batch is None:
                break
            prof.add_batch(batch.decode_s, batch.forward_s)
            if batch.items is not None:
                with prof.phase("GPU decode"):
                    batch = batch_pixels(batch, data, req.gpu, encoder.device)
            with prof.phase("forward"):
                pending = (encode_async(encoder, batch.pixels, precision, channels_last,
                                        req.taps) if batch.pixels is not None else None)
            if queued is not None:
                finish(*queued)
            queued = batch, pending
        if queued is not None:
            finish(*queued)
        with prof.phase("chunk writes"):
            writer.close()
    return work, mine, bs, plan, channels_last


def _consolidate(req: _Request, cfg: ExtractConfig, work: WorkDir, mine: list[int], bs: int,
                 plan: Plan, channels_last: bool, prof: Profile) -> tuple[Cache, int]:
    """The cache (or shard) from its chunks, with every attribute the schema records; written,
    and the work dir removed. Runs under the target's writer lock."""
    data, precision = req.data, cfg.precision
    with prof.phase("consolidation"):
        phantom_file = data.root / "phantom.json"
        i, n = req.part or (0, 1)
        base = dict(
            class_names=data.class_names, model=req.entry.name, dataset=data.entry.name,
            dataset_fingerprint=req.fingerprint, cache_key=req.key, files=req.files,
            attrs={"baseline": req.entry.baseline, "encoder": req.desc,
                   "intensity_pipeline": req.pipeline, "dataset_entry": data.entry.__dict__,
                   "dataset_root": str(data.root),
                   "phantom": json.loads(phantom_file.read_text()) if phantom_file.is_file() else "",
                   "precision": precision, "batch_size": bs,
                   "shard": f"{i}/{n}" if req.part else "",
                   "provenance": provenance(stage="extract", batch_size=bs,
                                            device=str(req.encoder.device), precision=precision,
                                            channels_last=channels_last,
                                            fast_decode="gpu" if req.gpu else req.fast is not None,
                                            workers=plan.why)})
        chunks = [work.read(k) for k in mine]
        if req.gpu:
            base["attrs"]["gpu_decode"] = gpu_decode_record(data, chunks)
        cache, n_skipped = _assemble(data, chunks, base)
        if not req.part and not cache.relpaths:
            first_err = cache.skipped["relpath"][0], cache.skipped["error"][0]
            raise VlmprobeError(f"No image under {data.root} could be decoded; first error: "
                                f"{first_err[0]}: {first_err[1]}")
        write_cache(req.target, cache)
        work.clear()
    return cache, n_skipped


def extract(model: str | ModelEntry, dataset: str | DatasetEntry | ImageDataset,
            root: str | Path | None = None, out: str | Path | None = None,
            config: ExtractConfig | None = None, *, dataset_options: dict | None = None,
            force: bool = False, progress: bool = True, trust_remote_code: bool | None = None,
            registry: list[Path] | tuple = (), datasets: list[Path] | tuple = (),
            **options) -> ExtractResult:
    """Embed ``dataset`` with ``model``; writes ``<out>/<dataset>/<model>.h5`` (``<model>@<view>.h5``
    for a non-default label view, see :func:`vlmprobe.cache.cache_path`) and returns it.

    ``model``: a registry key (``registry``: user model files beside ``$VLMPROBE_REGISTRY``) or
    a :class:`~vlmprobe.registry.ModelEntry`. ``dataset``: a registry key (``datasets``: user
    dataset files beside ``$VLMPROBE_DATASETS``), ``imagefolder:DIR``, ``csv:MANIFEST.csv``, a
    :class:`~vlmprobe.registry.DatasetEntry` or a listed :class:`~vlmprobe.data.ImageDataset`;
    ``<dataset>`` in the path is its key.

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
    ``num_workers``: None chooses how the run uses the machine (:mod:`.plan`); a number keeps
    the model in this process beside that many decoding workers. ``fast_decode`` on a CUDA GPU
    decodes JPEGs there (:mod:`.gpu_decode`). Where the wall time went is in
    ``ExtractResult.profile``.
    """
    cfg = with_options(config or ExtractConfig(), options)
    prof = Profile()
    req = _request(model, dataset, root, out, cfg, dataset_options, trust_remote_code, prof,
                   registry, datasets)
    served = _existing(req, cfg.precision, force, prof)
    if served is not None:
        return served
    with WriterLock(req.target):
        for stale in req.target.parent.glob(f".{req.target.name}.tmp-*"):  # killed mid-rename
            stale.unlink()
        work, mine, bs, plan, channels_last = _embed(req, cfg, progress, prof)
        cache, n_skipped = _consolidate(req, cfg, work, mine, bs, plan, channels_last, prof)
    for rel, err in zip(cache.skipped["relpath"], cache.skipped["error"]):
        log.warning(f"skipped unreadable image {req.data.root / rel}: {err}")
    if req.gpu:
        record = cache.attrs["gpu_decode"]
        log.info(f"GPU decoding: {record['nvjpeg']} images by nvJPEG, "
                 f"{len(record['pil']['relpath'])} by PIL (recorded in the cache)")
    with prof.phase("consolidation"):
        merged = _merge_if_complete(req.final, req.part[1]) if req.part else None
    prof.finish()
    return ExtractResult(req.target, "shard written" if req.part else "written",
                         len(cache.relpaths), n_skipped, merged, prof.as_dict())
