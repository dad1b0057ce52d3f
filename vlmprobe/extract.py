"""Extraction: embed every image of a dataset with one model, into one HDF5 cache.

Decoding and the official transform run in DataLoader workers while the model runs; an image
that cannot be decoded is recorded (path + error) and left out, never silently dropped. Each
batch is saved as its own chunk file (see :mod:`vlmprobe.chunks`), so a killed run continues
where it stopped, and the cache is assembled only when every chunk exists.

Scale-out: ``shard=(i, n)`` (or ``RANK``/``WORLD_SIZE`` from torchrun) embeds the batches
``k`` with ``k % n == i`` into a shard cache; :func:`merge_shards` joins the shards into the
cache a single process would have written, byte for byte, and runs by itself when the last
shard of a set is written.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths
from .cache import Cache, cache_key, read_cache, read_cache_key, write_cache
from .chunks import Chunk, WorkDir, WriterLock, chunk_batches
from .datasets import ImageDataset, load_dataset
from .encoders import Encoder, load_encoder
from .progress import console, progress_bar
from .provenance import provenance
from .registry import get_model_entry
from .validation import VlmprobeError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class _DecodedImages(torch.utils.data.Dataset):
    """Decode + transform in workers; a failure becomes an error string, not an exception."""

    def __init__(self, dataset: ImageDataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return i, self.transform(self.dataset.load_image(i)), ""
        except Exception as e:  # noqa: BLE001 — any decoder error means "unreadable file"
            return i, None, f"{type(e).__name__}: {e}"


class FastResize:
    """``--fast-decode``: the official transform with its first step, a torchvision ``Resize``,
    done by torch's uint8 antialiased kernel (AVX2) instead of PIL's — same output size rule,
    same filter, ≈ 1 grey level apart — then the official remaining steps.

    Why not JPEG DCT-scaled (draft) decoding: any pre-reduction before the official antialiased
    resize (DCT 1/2, ``Image.reduce(2)``, even a bicubic 2x) is a second filter in cascade, and
    efficientnet_lite0 embeddings moved by cosine ~1e-3 under it (min 0.9948-0.9988 over
    1024x768 and 2048x1536 JPEGs, 1.5x and 3x headroom to the resize alike); this single-stage
    path keeps cosine >= 0.99992 on all 2,000 benchmark JPEGs (benchmarks/RESULTS.md).
    """

    def __init__(self, resize, rest):
        self.resize, self.rest = resize, rest

    def __call__(self, image):
        from torchvision.transforms.v2 import functional as F

        return self.rest(F.to_pil_image(_resize(self.resize, F.pil_to_tensor(image))))


def _resize(step, pixels: torch.Tensor) -> torch.Tensor:
    """A torchvision ``Resize`` step done on a tensor (uint8 or float) with antialiasing, as PIL
    always resizes: same output size rule, same filter."""
    from torchvision.transforms.v2 import functional as F

    return F.resize(pixels, step.size, interpolation=step.interpolation,
                    max_size=step.max_size, antialias=True)


def _torch_resizable(step) -> bool:
    """A torchvision bilinear/bicubic ``Resize``: torch's antialiased kernel matches PIL's to
    about a grey level (nearest neighbours pick other pixels in torch than in PIL)."""
    from torchvision import transforms as T

    return isinstance(step, T.Resize) and step.interpolation in (
        T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC)


def fast_transform(transform):
    """:class:`FastResize` over ``transform``, or None when it does not begin with a torchvision
    bilinear/bicubic ``Resize`` (e.g. a transformers image processor): then there is nothing
    faithful to speed up and extraction keeps the exact path."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not steps or not _torch_resizable(steps[0]):
        return None
    return FastResize(steps[0], T.Compose(steps[1:]))


class FloatTransform:
    """``--intensity float``: the official transform's steps on a float32 [3, H, W] tensor in
    [0, 1], so 12/16-bit and windowed DICOM levels reach the model without rounding to 256."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1)
        for step in self.steps:
            pixels = step(pixels)
        return pixels.contiguous()


def _float_steps(transform) -> list | None:
    """The steps of an official transform that is a torchvision ``Compose`` (open_clip, timm,
    upstream) or torchvision's ``ImageClassification`` preset (resize, crop, normalise), else
    None."""
    from torchvision import transforms as T
    from torchvision.transforms._presets import ImageClassification

    if isinstance(transform, T.Compose):
        return list(transform.transforms)
    if isinstance(transform, ImageClassification):
        return [T.Resize(transform.resize_size, transform.interpolation),
                T.CenterCrop(transform.crop_size), T.Normalize(transform.mean, transform.std)]
    return None


#: steps that only turn a PIL image into an RGB image or a tensor: a float RGB tensor skips them
_PIL_ONLY = ("ToTensor", "PILToTensor", "MaybeToTensor", "MaybeConvertMode", "_convert_to_rgb")


def _clamped_resize(step, pixels: torch.Tensor) -> torch.Tensor:
    """:func:`_resize` kept in [0, 1], as PIL's 8-bit resize clips bicubic overshoot."""
    return _resize(step, pixels).clamp_(0, 1)


def _float_step(step, model: str):
    """``step`` as an operation on a float tensor in [0, 1], or None to skip it."""
    import copy

    from torchvision import transforms as T

    name = getattr(step, "__name__", type(step).__name__)
    if name in _PIL_ONLY:
        return None
    if _torch_resizable(step):
        return functools.partial(_clamped_resize, step)  # a partial pickles (spawned workers)
    if isinstance(step, (T.CenterCrop, T.Normalize, T.ConvertImageDtype)):
        return step  # tensor-native, and the same operation on a float image
    if isinstance(step, T.Pad) or name == "CenterCropOrPad":  # PIL fills in 8-bit levels
        if isinstance(step.fill, (int, float)):
            scaled = copy.copy(step)
            scaled.fill = step.fill / 255
            return scaled
    raise VlmprobeError(f"--intensity float: {model}'s official transform has a step {step!r} "
                        f"with no float version here; use --intensity 8bit for {model}.")


def float_transform(transform, model: str) -> FloatTransform:
    """The float version of ``model``'s official transform (:class:`FloatTransform`), or a
    VlmprobeError: a transform with no faithful float form is refused, never quantised."""
    steps = _float_steps(transform)
    if steps is None:
        raise VlmprobeError(
            f"--intensity float: {model}'s official transform is a {type(transform).__name__}, "
            "not a torchvision Compose (resize, crop, normalise), so vlmprobe cannot give it "
            "float pixels without rounding them to 8-bit first. Use --intensity 8bit for "
            f"{model}.")
    mapped = [_float_step(step, model) for step in steps]
    return FloatTransform([m for m in mapped if m is not None])


def input_transform(encoder: Encoder, intensity: str = "8bit"):
    """What turns a decoded sample into the model's input: the official transform for 8-bit
    RGB, :func:`float_transform` for ``intensity="float"`` (extract and RISE alike)."""
    if intensity == "float":
        return float_transform(encoder.transform_, encoder.entry.name)
    return encoder.transform_


def _collate(items):
    ok = [(i, x) for i, x, err in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], pixels, failed, min(i for i, _, _ in items)


@dataclass
class ExtractResult:
    path: Path
    status: str  # "written" | "up to date" | "shard written"
    n_images: int
    n_skipped: int
    merged: Path | None = None  # the whole cache, when this shard completed a set


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (or ``(i, n)``), else torchrun's ``RANK``/``WORLD_SIZE``, else None."""
    if shard is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None or int(world) <= 1:
            return None
        shard = (int(rank), int(world))
    if isinstance(shard, str):
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise VlmprobeError(f"--shard {shard!r}: expected i/n, e.g. 0/4.") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise VlmprobeError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n.")
    return (i, n) if n > 1 else None


def shard_path(target: Path, i: int, n: int) -> Path:
    """Shard files do not end in .h5: stages that scan a directory never take one for a cache."""
    return target.with_name(f"{target.name}.shard-{i}-of-{n}")


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise VlmprobeError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device.type == "cpu":
        raise VlmprobeError("--precision fp16 needs a GPU; on CPU use fp32 (default) or bf16.")
    return PRECISIONS[precision]


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def _uses_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def _channels_last(encoder: Encoder) -> bool:
    """Conv nets on a GPU run faster channels-last (tensor cores); elsewhere leave memory as is."""
    if encoder.device.type == "cuda" and _uses_conv(encoder.model_):
        encoder.model_.to(memory_format=torch.channels_last)
        return True
    return False


def _forward(encoder: Encoder, pixels: torch.Tensor, precision: str, channels_last: bool,
             taps: list[str] | None = None) -> dict[str, np.ndarray]:
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with _autocast(encoder.device, precision):
        feats = encoder.encode_taps(pixels, taps or [encoder.entry.tap])
    return {t: f.float().cpu().numpy() for t, f in feats.items()}


def encode(encoder: Encoder, pixels: torch.Tensor, precision: str = "fp32",
           channels_last: bool = False, taps: list[str] | None = None) -> dict[str, np.ndarray]:
    """One batch at ``precision``: tap name -> float32 [B, d] for ``taps`` (default: the entry's
    tap), from one forward pass; a GPU out-of-memory splits the batch instead of crashing."""
    try:
        return _forward(encoder, pixels, precision, channels_last, taps)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(pixels) == 1:
            raise VlmprobeError(f"One image does not fit in GPU memory with {encoder.entry.name}; "
                                "use --precision bf16 or --device cpu.") from None
        half = len(pixels) // 2
        a, b = (encode(encoder, part, precision, channels_last, taps)
                for part in (pixels[:half], pixels[half:]))
        return {t: np.concatenate([a[t], b[t]]) for t in a}


def auto_batch_size(encoder: Encoder, sample: torch.Tensor, precision: str = "fp32",
                    channels_last: bool = False, cpu_candidates=(4, 8, 16, 32),
                    gpu_max: int = 1024) -> int:
    """GPU: the largest power of two whose forward fits. CPU: the fastest of a few sizes, timed."""
    if encoder.device.type == "cuda":
        b = gpu_max
        while b > 1:
            x = None
            try:  # no splitting here: the point is to find what fits whole
                x = sample.to(encoder.device).expand(b, *sample.shape).clone()
                _forward(encoder, x, precision, channels_last)
                torch.cuda.synchronize()
                return b
            except torch.cuda.OutOfMemoryError:
                b //= 2
            finally:
                del x  # free the probe batch before the next, smaller try
                torch.cuda.empty_cache()
        return 1
    best, best_rate = cpu_candidates[0], 0.0
    for b in cpu_candidates:
        x = sample.expand(b, *sample.shape).clone()
        encode(encoder, x, precision)  # warm-up: allocator, oneDNN kernels for this shape
        t0 = time.perf_counter()
        encode(encoder, x, precision)
        rate = b / (time.perf_counter() - t0)
        if rate > best_rate:
            best, best_rate = b, rate
    return best


def _first_sample(images: _DecodedImages) -> torch.Tensor:
    for i in range(len(images)):
        _, x, _ = images[i]
        if x is not None:
            return x
    raise VlmprobeError(f"No image under {images.dataset.root} could be decoded.")


def _explain_key_mismatch(path: Path, encoder: Encoder, fingerprint: str, pipeline: str,
                          precision: str, extra_taps: list[str]) -> str:
    old = read_cache(path)
    reasons = []
    if sorted(old.taps) != sorted(extra_taps):
        reasons.append(f"further taps {sorted(old.taps) or 'none'} -> "
                       f"{sorted(extra_taps) or 'none'}")
    if "precision" not in old.attrs:
        reasons.append("written by an older vlmprobe (cache schema 1)")
    if old.dataset_fingerprint != fingerprint:
        reasons.append(f"dataset files changed (fingerprint {old.dataset_fingerprint[:12]} -> "
                       f"{fingerprint[:12]})")
    old_enc = old.attrs.get("encoder", {})
    if old_enc.get("weights_sha256") != encoder.weights_sha256_:
        reasons.append("model weights differ")
    if old_enc.get("entry") != json.loads(json.dumps(encoder.entry.to_dict(), default=str)):
        reasons.append("registry entry (tap, preprocessing or source) differs")
    if old.attrs.get("intensity_pipeline") != pipeline:
        reasons.append("intensity pipeline (or --fast-decode) differs")
    if old.attrs.get("precision", precision) != precision:
        reasons.append(f"precision {old.attrs['precision']} -> {precision}")
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
            out: str | Path | None = None, batch_size: int | str = 32, device: str = "auto",
            num_workers: int | None = None, force: bool = False, progress: bool = True,
            precision: str = "fp32", shard: str | tuple[int, int] | None = None,
            fast_decode: bool = False, dataset_options: dict | None = None,
            trust_remote_code: bool | None = None,
            taps: str | list[str] | None = None) -> ExtractResult:
    """Embed ``dataset`` with ``model``; writes ``<out>/<dataset>/<model>.h5`` (``<model>@<view>.h5``
    for a non-default label view, see :func:`vlmprobe.paths.cache_path`) and returns it.

    Re-running after a crash continues from the chunks on disk. ``batch_size="auto"`` picks
    one (see :func:`auto_batch_size`); a resumed run keeps the batch size it started with.
    ``dataset_options``: :func:`~vlmprobe.datasets.load_dataset` choices (size, dicom_window,
    intensity, label_level, class_subset), recorded in the cache's dataset entry and key;
    ``intensity="float"`` (:func:`float_transform`) and a non-default DICOM window also name the
    cache (``<model>@float.h5``, ``<model>@window=minmax.h5``), beside the default one.
    ``trust_remote_code``: the user's opt-in for entries that declare hub code (None: read
    ``$VLMPROBE_TRUST_REMOTE_CODE``).
    ``taps``: further taps (the family's names, a list or "a,b") computed in the same forward
    pass as the entry's own and stored beside it (``/taps/<tap>``, see :mod:`vlmprobe.cache`).
    """
    entry = get_model_entry(model)
    data = load_dataset(dataset, root, **(dataset_options or {}))
    relpaths = [s.relpath for s in data.samples]
    final = paths.cache_path(paths.cache_dir(out), dataset, model, data.cache_view)
    part = parse_shard(shard)
    target = shard_path(final, *part) if part else final
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise VlmprobeError(f"--batch-size {batch_size!r}: give a positive integer or 'auto'.")

    console.print(f"Fingerprinting {len(relpaths)} files under {data.root} ...")
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
        console.print(f"[yellow]--fast-decode has no effect for {model}[/]: "
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
                console.print(f"[yellow]Resuming with batch size {bs}[/] (the interrupted run's), "
                              f"not {batch_size}, so the batch boundaries stay the same.")
        elif batch_size == "auto":
            bs = auto_batch_size(encoder, _first_sample(images), precision, channels_last)
            console.print(f"--batch-size auto: {bs} on {encoder.device}")
        else:
            bs = batch_size
        work.start(dict(want, batch_size=bs))
        i, n = part or (0, 1)
        mine = [k for k in range(math.ceil(len(data) / bs)) if k % n == i]
        todo = sorted(set(mine) - work.done_verified(console.print))
        if len(todo) < len(mine):
            console.print(f"Resuming: {len(mine) - len(todo)} of {len(mine)} chunks already done "
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
        console.print(f"[yellow]skipped unreadable image[/] {data.root / rel}: {err}")
    if not part:
        return ExtractResult(target, "written", len(cache.relpaths), n_skipped)
    return ExtractResult(target, "shard written", len(cache.relpaths), n_skipped,
                         _merge_if_complete(final, n))


def _merge_if_complete(final: Path, n: int) -> Path | None:
    """Whichever shard finishes last merges; a concurrent finisher holding the lock does it."""
    shards = [shard_path(final, j, n) for j in range(n)]
    lock = WriterLock(final)
    if not lock.try_acquire():
        return None
    try:
        if not all(p.exists() for p in shards):
            return None
        return merge_shards(shards, final, locked=True)
    finally:
        lock.release()


def merge_shards(shard_files: list[str | Path], target: str | Path | None = None,
                 remove: bool = True, locked: bool = False) -> Path:
    """Join the shard caches of one extraction into the cache one process would have written.

    Refuses shards of different requests (cache keys, batch sizes) and incomplete sets, naming
    the missing shard or samples. The shard files are removed after the merge unless ``remove``
    is False.
    """
    files = [Path(p) for p in shard_files]
    if not files:
        raise VlmprobeError("No shard files given to merge.")
    shards = [read_cache(p) for p in files]
    for p, c in zip(files, shards):
        if not c.shard:
            raise VlmprobeError(f"{p} is a whole cache, not a shard (empty shard attribute).")
    first = shards[0]
    n = int(first.shard.split("/")[1])
    for p, c in zip(files, shards):
        if c.cache_key != first.cache_key:
            raise VlmprobeError(f"{p} was made from other inputs than {files[0]} (cache keys "
                                f"{c.cache_key[:12]} vs {first.cache_key[:12]}); shards of one "
                                "merge must come from the same extract command.")
        same_bs = c.attrs.get("batch_size") == first.attrs.get("batch_size")
        if not same_bs or not c.shard.endswith(f"/{n}"):
            raise VlmprobeError(f"{p} (shard {c.shard}, batch size {c.attrs.get('batch_size')}) "
                                f"does not belong with {files[0]} (shard {first.shard}, batch size "
                                f"{first.attrs.get('batch_size')}).")
    have = sorted(int(c.shard.split("/")[0]) for c in shards)
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        dup = sorted({s for s in have if have.count(s) > 1})
        raise VlmprobeError(f"Shards to merge must be 0..{n - 1} once each; missing {missing}"
                            f"{f', duplicated {dup}' if dup else ''}. Run `vlmprobe extract "
                            f"--shard i/{n}` for the missing ones.")
    position = {r: j for j, r in enumerate(first.files["relpath"])}
    rows = sorted((position[r], s, j) for s, c in enumerate(shards)
                  for j, r in enumerate(c.relpaths))
    skipped = sorted((position[r], e) for c in shards
                     for r, e in zip(c.skipped["relpath"], c.skipped["error"]))
    covered = [p for p, _, _ in rows] + [p for p, _ in skipped]
    if sorted(covered) != list(range(len(position))):
        raise VlmprobeError(f"Shards {', '.join(map(str, files))} do not cover every sample "
                            f"exactly once ({len(covered)} rows for {len(position)} samples); re-run the "
                            "shards' extract commands.")
    merged = Cache(
        embeddings=np.stack([shards[s].embeddings[j] for _, s, j in rows]).astype(np.float32),
        labels=np.array([shards[s].labels[j] for _, s, j in rows], dtype=np.int64),
        relpaths=[shards[s].relpaths[j] for _, s, j in rows],
        metadata={col: [shards[s].metadata[col][j] for _, s, j in rows] for col in first.metadata},
        skipped={"relpath": [first.files["relpath"][p] for p, _ in skipped],
                 "error": [e for _, e in skipped]},
        class_names=first.class_names, model=first.model, dataset=first.dataset,
        dataset_fingerprint=first.dataset_fingerprint, cache_key=first.cache_key,
        files=first.files,
        attrs=dict(first.attrs, shard="", merged_from=[p.name for p in files]),
        taps={t: np.stack([shards[s].taps[t][j] for _, s, j in rows]).astype(np.float32)
              for t in first.taps},
    )
    target = Path(target) if target else files[0].with_name(files[0].name.split(".shard-")[0])
    with contextlib.nullcontext() if locked else WriterLock(target):
        write_cache(target, merged)
    if remove:
        for p in files:
            p.unlink(missing_ok=True)
    return target
