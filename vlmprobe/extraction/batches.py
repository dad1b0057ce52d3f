"""Batches through the model: decoding in DataLoader workers, precision, GPU memory.

An image that cannot be decoded becomes an error string in its batch, not an exception, so the
engine records it and carries on; a GPU out-of-memory splits the batch instead of crashing.
"""
from __future__ import annotations

import contextlib
import os
import time

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


def _collate(items):
    ok = [(i, x) for i, x, err in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], pixels, failed, min(i for i, _, _ in items)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


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
             taps: list[str] | None = None) -> dict[str, np.ndarray]:
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with precision_autocast(encoder.device, precision):
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
