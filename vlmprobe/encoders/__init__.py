"""Encoders: one adapter class per model family, one registry entry per model."""
from __future__ import annotations

import torch

from ..registry import ModelEntry, get_model_entry
from ..validation import VlmprobeError, unknown_key_error
from .base import FAMILIES, Encoder, register_family
from . import hf_family, open_clip_family, timm_family  # noqa: F401  (importing registers them)

__all__ = ["Encoder", "FAMILIES", "load_encoder", "register_family", "resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmprobeError("--device cuda was asked for, but torch sees no GPU; use --device cpu.")
    return torch.device(device)


def load_encoder(model: str | ModelEntry, device: str = "auto") -> Encoder:
    """Build and load the encoder for a registry key (or entry) on ``device``."""
    entry = get_model_entry(model) if isinstance(model, str) else model
    if entry.family not in FAMILIES:
        raise unknown_key_error("model family", entry.family, FAMILIES)
    return FAMILIES[entry.family](entry, device=resolve_device(device)).load()
