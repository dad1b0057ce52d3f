"""Extraction: embed every image of a dataset with one model, into one HDF5 cache.

Decoding and the official transform run in DataLoader workers while the model runs; an image
that cannot be decoded is recorded (path + error) and left out, never silently dropped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths
from .cache import Cache, cache_key, read_cache, read_cache_key, write_cache
from .datasets import ImageDataset, fingerprint_files, load_dataset
from .encoders import Encoder, load_encoder
from .progress import console, progress_bar
from .provenance import provenance
from .registry import get_model_entry
from .validation import VlmprobeError


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
    return [i for i, _ in ok], pixels, failed


@dataclass
class ExtractResult:
    path: Path
    status: str  # "written" | "up to date"
    n_images: int
    n_skipped: int


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _explain_key_mismatch(path: Path, encoder: Encoder, fingerprint: str, pipeline: str) -> str:
    old = read_cache(path)
    reasons = []
    if old.dataset_fingerprint != fingerprint:
        reasons.append(f"dataset files changed (fingerprint {old.dataset_fingerprint[:12]} -> "
                       f"{fingerprint[:12]})")
    old_enc = old.attrs.get("encoder", {})
    if old_enc.get("weights_sha256") != encoder.weights_sha256_:
        reasons.append("model weights differ")
    if old_enc.get("entry") != json.loads(json.dumps(encoder.entry.to_dict(), default=str)):
        reasons.append("registry entry (tap, preprocessing or source) differs")
    if old.attrs.get("intensity_pipeline") != pipeline:
        reasons.append("intensity pipeline differs")
    return "; ".join(reasons) or "vlmprobe version or transform changed"


def extract(model: str, dataset: str, root: str | Path | None = None,
            out: str | Path | None = None, batch_size: int = 32, device: str = "auto",
            num_workers: int | None = None, force: bool = False,
            progress: bool = True) -> ExtractResult:
    """Embed ``dataset`` with ``model``; writes ``<out>/<dataset>/<model>.h5`` and returns it."""
    entry = get_model_entry(model)
    data = load_dataset(dataset, root)
    relpaths = [s.relpath for s in data.samples]
    target = paths.cache_path(paths.cache_dir(out), dataset, model)

    console.print(f"Fingerprinting {len(relpaths)} files under {data.root} ...")
    sizes, digests, fingerprint = fingerprint_files(data.root, relpaths)
    encoder = load_encoder(entry, device)
    desc = encoder.describe()
    pipeline = data.intensity_pipeline  # derived from every sample: compute once
    key = cache_key(desc, fingerprint, pipeline)
    if target.exists():
        old_key = read_cache_key(target)
        if old_key == key:
            old = read_cache(target)
            return ExtractResult(target, "up to date", len(old.relpaths), len(old.skipped["relpath"]))
        if old_key is not None and not force:
            raise VlmprobeError(
                f"{target} exists but was made from different inputs: "
                f"{_explain_key_mismatch(target, encoder, fingerprint, pipeline)}. "
                "Pass --force to overwrite it, or --out another directory.")

    loader = torch.utils.data.DataLoader(
        _DecodedImages(data, encoder.transform_), batch_size=batch_size, shuffle=False,
        num_workers=default_workers() if num_workers is None else num_workers,
        collate_fn=_collate, pin_memory=encoder.device.type == "cuda")
    order, chunks, skipped = [], [], []
    with progress_bar(f"extract {model} / {dataset}", len(data), enabled=progress) as advance:
        for idx, pixels, failed in loader:
            if pixels is not None:
                chunks.append(encoder.encode_images(pixels).cpu().numpy())
                order.extend(idx)
            skipped.extend(failed)
            advance(len(idx) + len(failed))
    if not order:
        raise VlmprobeError(f"No image under {data.root} could be decoded; first error: "
                            f"{relpaths[skipped[0][0]]}: {skipped[0][1]}")
    for i, err in skipped:
        console.print(f"[yellow]skipped unreadable image[/] {data.path(i)}: {err}")

    phantom_file = data.root / "phantom.json"
    cache = Cache(
        embeddings=np.concatenate(chunks).astype(np.float32),
        labels=np.array([data.samples[i].label for i in order], dtype=np.int64),
        relpaths=[relpaths[i] for i in order], class_names=data.class_names, model=model,
        dataset=dataset, dataset_fingerprint=fingerprint, cache_key=key,
        metadata={col: [data.samples[i].metadata.get(col, "") for i in order]
                  for col in data.metadata_columns},
        files={"relpath": relpaths, "size": sizes, "digest": digests},
        skipped={"relpath": [relpaths[i] for i, _ in skipped], "error": [e for _, e in skipped]},
        attrs={"baseline": entry.baseline, "encoder": desc, "intensity_pipeline": pipeline,
               "dataset_entry": data.entry.__dict__, "dataset_root": str(data.root),
               "phantom": json.loads(phantom_file.read_text()) if phantom_file.is_file() else "",
               "provenance": provenance(stage="extract", batch_size=batch_size,
                                        device=str(encoder.device))},
    )
    write_cache(target, cache)
    return ExtractResult(target, "written", len(order), len(skipped))
