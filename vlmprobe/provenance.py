"""Provenance recorded in every output: what ran, on what, with which versions."""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path

from . import __version__

_PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch", "transformers", "numpy",
             "scikit-learn", "umap-learn", "h5py", "pillow")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The vlmprobe checkout's commit (with '+dirty' if modified), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now_utc() -> str:
    """The time now as every output records it: UTC, ISO 8601, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(**extra) -> dict:
    """A JSON-serialisable record of the run; stage-specific fields go in ``extra``."""
    return {
        "vlmprobe_version": __version__,
        "git_commit": git_commit(),
        "time_utc": now_utc(),
        "command_line": " ".join(sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        **extra,
    }


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
