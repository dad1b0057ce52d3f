"""Encoders: one adapter class per model family, one registry entry per model."""
from __future__ import annotations

import os
import re

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
#: a full git commit hash: the only revision a hub repo cannot move
COMMIT = re.compile(r"[0-9a-f]{40}")


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
    if problem := remote_code_problem(entry, trust_remote_code):
        raise VlmprobeError(problem)
    return FAMILIES[entry.family](entry, device=torch.device(resolve_device(device))).load()


def remote_code_problem(entry: ModelEntry, trust_remote_code: bool | None = None,
                        locked: bool | None = None) -> str | None:
    """Why ``entry`` may not load now, or None. Hub code runs only when the entry declares it and
    the user opts in, and then only at a known revision (the entry's pinned commit, or the commit
    ``vlmprobe models fetch`` locked), so the code the user read is the code that runs; a local
    checkpoint (``weights:``) is the user's own code. ``locked``: whether the entry has a verified
    lock, where the caller has read it already (None: read it here)."""
    if not entry.trust_remote_code:
        return None
    if not remote_code_allowed(trust_remote_code):
        return (f"Model {entry.name!r} runs Python code from its hub repo {entry.source} "
                "(trust_remote_code). Read that code, then pass --trust-remote-code (or set "
                f"{TRUST_REMOTE_CODE_ENV}=1) to allow it.")
    if entry.weights or (entry.revision and COMMIT.fullmatch(entry.revision)):
        return None
    from .fetch import lock_name, lock_path, read_lock

    if locked or (locked is None and read_lock(lock_name(entry)) is not None):
        return None
    return (f"Model {entry.name!r} runs Python code from its hub repo {entry.source}, and vlmprobe "
            "runs hub code only at a known revision (a branch can move under you). Run "
            f"`vlmprobe models fetch {entry.name}`: it downloads the repo and locks its commit and "
            f"every file's sha256 in {lock_path(lock_name(entry))}; or pin `revision: <commit>` "
            "(40 hex digits) in a user registry entry with `replaces: builtin`.")
