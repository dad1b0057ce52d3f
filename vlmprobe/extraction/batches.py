"""Batches through the model: decoding in DataLoader workers, precision, GPU memory.

An image that cannot be decoded becomes an error string in its batch, not an exception, so the
engine records it and carries on; a GPU out-of-memory splits the batch instead of crashing.
Where the plan says so (:mod:`.plan`, CPU), a worker runs the model on its own batch too and
hands over embeddings instead of pixels.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import ImageDataset
from ..encoders import Encoder
from ..validation import VlmprobeError

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

    def __getitems__(self, indices):
        """One batch's items and the seconds they took (the DataLoader fetches a batch here)."""
        t0 = time.perf_counter()
        return [self[i] for i in indices], time.perf_counter() - t0


@dataclass
class Batch:
    """One batch as a worker hands it over. ``pixels``: the model's input for ``idx``; or
    ``items``: what the GPU path decodes (:mod:`.gpu_decode`); or ``embeddings`` (tap ->
    float32 [len(idx), d]) where the worker ran the model. ``first``: the smallest sample index,
    i.e. chunk number x batch size."""

    first: int
    idx: list[int]
    failed: list[tuple[int, str]]
    pixels: torch.Tensor | None = None
    items: list | None = None
    embeddings: dict[str, np.ndarray] | None = None
    decode_s: float = 0.0
    forward_s: float = 0.0
    cpu_decoded: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        """Page-locked pixels for a non-blocking copy to the GPU (the DataLoader calls this)."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        if self.items:  # PIL-decoded pixels go to the GPU; JPEG bytes go to nvJPEG as they are
            self.items = [(x[0].pin_memory(), x[1]) if isinstance(x, tuple) else x
                          for x in self.items]
        return self


class _Collate:
    """A batch's items -> :class:`Batch`; ``stack``: pixels are stacked (False for the GPU path,
    whose items differ in size); ``encode`` (pixels -> tap -> array): run the model here."""

    def __init__(self, stack: bool = True, encode=None):
        self.stack, self.encode = stack, encode

    def __call__(self, fetched) -> Batch:
        items, decode_s = fetched
        ok = [(i, x) for i, x, _ in items if x is not None]
        batch = Batch(min(i for i, _, _ in items), [i for i, _ in ok],
                      [(i, err) for i, x, err in items if x is None], decode_s=decode_s)
        if not ok:
            return batch
        if not self.stack:
            batch.items = [x for _, x in ok]
            return batch
        batch.pixels = torch.stack([x for _, x in ok])
        if self.encode is not None:
            t0 = time.perf_counter()
            batch.embeddings, batch.pixels = self.encode(batch.pixels), None
            batch.forward_s = time.perf_counter() - t0
        return batch


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise VlmprobeError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device.type == "cpu":
        raise VlmprobeError("--precision fp16 needs a GPU; on CPU use fp32 (default) or bf16.")
    return PRECISIONS[precision]


def precision_autocast(device: torch.device, precision: str):
    """The autocast a forward at ``precision`` runs under (none for fp32): extraction's, and
    RISE's when it explains a cache made at that precision."""
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
             taps: list[str] | None = None) -> dict[str, torch.Tensor]:
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with precision_autocast(encoder.device, precision):
        return encoder.encode_taps(pixels, taps or [encoder.entry.tap])


class Embeddings:
    """One batch's features on their way to this process's memory. From a GPU they are copied
    without blocking (into page-locked memory) and read by :meth:`numpy` after the next batch
    is queued, so the GPU does not idle while the host waits for a copy."""

    def __init__(self, feats: dict[str, torch.Tensor]):
        cuda = [f.device for f in feats.values() if f.is_cuda]
        self.host = {t: f.to("cpu", non_blocking=bool(cuda)) for t, f in feats.items()}
        self.copied = None
        if cuda:
            self.copied = torch.cuda.Event()
            self.copied.record(torch.cuda.current_stream(cuda[0]))

    def numpy(self) -> dict[str, np.ndarray]:
        if self.copied is not None:
            self.copied.synchronize()
        return {t: f.numpy() for t, f in self.host.items()}


def encode_async(encoder: Encoder, pixels: torch.Tensor, precision: str = "fp32",
                 channels_last: bool = False, taps: list[str] | None = None) -> Embeddings:
    """:func:`encode`, returning as soon as the GPU has the work (see :class:`Embeddings`)."""
    try:
        return Embeddings(_forward(encoder, pixels, precision, channels_last, taps))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(pixels) == 1:
            raise VlmprobeError(f"One image does not fit in GPU memory with {encoder.entry.name}; "
                                "use --precision bf16 or --device cpu.") from None
        half = len(pixels) // 2
        a, b = (encode(encoder, part, precision, channels_last, taps)
                for part in (pixels[:half], pixels[half:]))
        return Embeddings({t: torch.from_numpy(np.concatenate([a[t], b[t]])) for t in a})


def encode(encoder: Encoder, pixels: torch.Tensor, precision: str = "fp32",
           channels_last: bool = False, taps: list[str] | None = None) -> dict[str, np.ndarray]:
    """One batch at ``precision``: tap name -> float32 [B, d] for ``taps`` (default: the entry's
    tap), from one forward pass; a GPU out-of-memory splits the batch instead of crashing."""
    return encode_async(encoder, pixels, precision, channels_last, taps).numpy()


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
