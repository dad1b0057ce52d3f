"""Encoders: one adapter class per model family, one registry entry per model."""
from __future__ import annotations

import os

import torch

from ..devices import resolve_device
from ..registry import ModelEntry, get_model_entry
from ..validation import VlmprobeError, unknown_key_error
from . import (  # noqa: F401  (the families register themselves on import)
    hf_family,
    llava_family,
    merlin_family,
    open_clip_family,
    pixels_family,
    timm_family,
    torchvision_family,
    upstream_family,
)
from .base import FAMILIES, Encoder, register_family

__all__ = ["Encoder", "FAMILIES", "load_encoder", "register_family", "resolve_device"]

TRUST_REMOTE_CODE_ENV = "VLMPROBE_TRUST_REMOTE_CODE"


def remote_code_allowed(trust_remote_code: bool | None = None) -> bool:
    """The user's opt-in to run a hub repo's own code: ``--trust-remote-code`` or
    ``$VLMPROBE_TRUST_REMOTE_CODE=1``."""
    if trust_remote_code is not None:
        return trust_remote_code
    return os.environ.get(TRUST_REMOTE_CODE_ENV, "") in ("1", "true", "yes")


def load_encoder(model: str | ModelEntry, device: str = "auto",
                 trust_remote_code: bool | None = None) -> Encoder:
    """Build and load the encoder for a registry key (or entry) on ``device``.

    An entry that declares ``trust_remote_code`` runs the hub repo's Python code, so it loads only
    when the user also opts in (``trust_remote_code=True``, ``--trust-remote-code`` or
    ``$VLMPROBE_TRUST_REMOTE_CODE=1``); an entry that does not declare it never runs such code.
    """
    entry = get_model_entry(model) if isinstance(model, str) else model
    if entry.family not in FAMILIES:
        raise unknown_key_error("model family", entry.family, FAMILIES)
    if entry.trust_remote_code and not remote_code_allowed(trust_remote_code):
        raise VlmprobeError(
            f"Model {entry.name!r} runs Python code from its hub repo {entry.source} "
            "(trust_remote_code). Read that code, then pass --trust-remote-code (or set "
            f"{TRUST_REMOTE_CODE_ENV}=1) to allow it.")
    return FAMILIES[entry.family](entry, device=torch.device(resolve_device(device))).load()
