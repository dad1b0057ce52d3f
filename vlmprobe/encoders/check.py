"""What ``vlmprobe models --check`` and ``--compare-weights`` report, without downloading.

``check_entry`` inspects this environment only: the family's packages (``importlib`` finds them
without importing), the user's opt-in to remote code, an HF token for gated repos, and whether
the files a load reads are already in the HF / torch.hub caches (``try_to_load_from_cache``),
and, for a model fetched with ``vlmprobe models fetch``, that they still match its lock.
``compare_weights`` loads two encoders and compares their vision tensors by content, so a user
sees when two "different" models (LLaVA-Med and CLIP L/14-336) share one encoder.
"""
from __future__ import annotations

import hashlib
import importlib.util
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..registry import ModelEntry
from ..validation import VlmprobeError
from .base import FAMILIES

#: pip package -> import name, where they differ
_MODULES = {"open_clip_torch": "open_clip"}


@dataclass
class CheckResult:
    name: str
    status: str  # ready | downloads | blocked
    reasons: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached(location: str, names: tuple[str, ...], revision: str | None) -> bool:
    """One of ``names`` is in local directory ``location`` or in the HF cache of repo ``location``."""
    from huggingface_hub import try_to_load_from_cache

    if Path(location).expanduser().is_dir() or location.startswith("/"):
        return any((Path(location).expanduser() / n).is_file() for n in names)
    return any(isinstance(try_to_load_from_cache(location, n, revision=revision), str)
               for n in names)


def _lock_state(entry: ModelEntry, result: CheckResult) -> str | None:
    """The path of the entry's lock (``models fetch``) when its files match it; a mismatch is
    a reason the entry cannot load (a load would refuse it)."""
    from .fetch import lock_name, read_lock, verified_snapshots

    if entry.weights:
        return None
    try:
        lock = read_lock(lock_name(entry))
        if lock is None:
            return None
        verified_snapshots(entry)
    except VlmprobeError as err:
        result.reasons.append(str(err))
        return None
    return lock["path"]


def check_entry(entry: ModelEntry, trust_remote_code: bool | None = None) -> CheckResult:
    """Can ``entry`` load here, and if not, why not (every reason, not only the first)."""
    from . import remote_code_allowed, remote_code_problem
    from .hub import gated_hint, local_weights

    result = CheckResult(entry.name, "ready")
    cls = FAMILIES.get(entry.family)
    if cls is None:
        result.reasons.append(f"unknown family {entry.family!r}")
        result.status = "blocked"
        return result
    missing = [p for p in cls.requires
               if importlib.util.find_spec(_MODULES.get(p, p).replace("-", "_")) is None]
    if missing:
        result.reasons.append(f"missing package(s): pip install {' '.join(missing)}")
    extra = getattr(cls, "missing_requirement", None)  # what a family needs beyond `requires`
    if extra is not None and (problem := extra(entry)):
        result.reasons.append(problem)
    locked = _lock_state(entry, result)
    if entry.trust_remote_code and not remote_code_allowed(trust_remote_code):
        result.reasons.append("runs the hub repo's own code: pass --trust-remote-code")
    elif remote_code_problem(entry, trust_remote_code, locked=locked is not None):
        result.reasons.append("runs the hub repo's own code only at a known revision: "
                              f"`vlmprobe models fetch {entry.name}` locks one")
    if entry.gated and not entry.weights and not locked:  # a verified lock loads from disk
        from huggingface_hub import get_token

        if get_token() is None:
            result.reasons.append(f"gated: {gated_hint(entry.source.split(':')[-1])}")
    if entry.weights:  # a local checkpoint: nothing from the hub for the entry's own repo
        try:
            local_weights(entry)
        except VlmprobeError as err:
            result.reasons.append(str(err))
    elif not missing:
        try:
            needs = cls.needed_files(entry)
        except VlmprobeError as err:
            needs = []
            result.reasons.append(str(err))
        result.missing_files = [f"{loc}: {' or '.join(names)}" for loc, names in needs
                                if not _cached(loc, names, entry.revision)]
    if result.missing_files:
        result.reasons.append("weights not cached" + (" and HF_HUB_OFFLINE=1" if _offline()
                                                        else ": the first load downloads them"))
    blocking = [r for r in result.reasons if not r.startswith("weights not cached:")]
    result.status = "blocked" if blocking else "downloads" if result.missing_files else "ready"
    if locked:
        result.reasons.append(f"matches its lock {locked} (every locked file's sha256)")
    for note in getattr(cls, "check_notes", ()):
        result.reasons.append(note)
    return result


def vision_tensors(encoder) -> dict:
    """The loaded encoder's vision-side tensors (the whole model when it has no text tower),
    names without a leading ``vision_model.`` (CLIPVisionModel vs CLIPModel.vision_model)."""
    model = encoder.model_
    part = next((getattr(model, a) for a in ("tower", "vision_model", "visual", "vision_tower")
                 if hasattr(getattr(model, a, None), "state_dict")), model)
    return {k.removeprefix("vision_model."): v for k, v in part.state_dict().items()}


def _fingerprints(tensors: dict) -> Counter:
    """(name, shape, sha256 at float16 precision) per tensor, skipping constant tensors (e.g.
    LayerNorm at init), which say nothing about where the weights came from. float16 because
    LLaVA checkpoints store a float16 copy of CLIP's float32 tower."""
    out = Counter()
    for name, tensor in tensors.items():
        t = tensor.detach().cpu().half().contiguous()
        if t.numel() < 2 or bool((t == t.flatten()[0]).all()):
            continue
        out[(name, tuple(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest())] += 1
    return out


@dataclass
class WeightComparison:
    a: str
    b: str
    n_a: int
    n_b: int
    shared: int  # non-constant tensors with equal name, shape and float16 values in both
    n_same_name: int  # tensors with the same name and shape in both
    max_abs_diff: float | None  # largest |a - b| over those (float32), None if there are none

    @property
    def verdict(self) -> str:
        if self.shared == self.n_a == self.n_b:
            return "identical vision encoders"
        if self.shared == min(self.n_a, self.n_b):
            return "one vision encoder is contained in the other"
        if self.shared:
            return "partly shared vision tensors"
        return "no shared vision tensors"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def compare_weights(a: str | ModelEntry, b: str | ModelEntry,
                    trust_remote_code: bool | None = None) -> WeightComparison:
    """Compare two models' vision tensors by name, shape and float16 values (a float16 copy of
    float32 weights counts as the same tensor)."""
    from . import load_encoder

    tensors = [vision_tensors(load_encoder(m, device="cpu", trust_remote_code=trust_remote_code))
               for m in (a, b)]
    hashes = [_fingerprints(t) for t in tensors]
    pairs = [(t, tensors[1][k]) for k, t in tensors[0].items()
             if k in tensors[1] and tensors[1][k].shape == t.shape]
    diff = max((float((x.float() - y.float()).abs().max()) for x, y in pairs if x.numel()),
               default=None)
    name = lambda m: m if isinstance(m, str) else m.name  # noqa: E731
    return WeightComparison(name(a), name(b), sum(hashes[0].values()), sum(hashes[1].values()),
                            sum((hashes[0] & hashes[1]).values()), len(pairs), diff)
