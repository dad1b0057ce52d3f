"""The encoder contract every model family implements.

An :class:`Encoder` is built from a registry entry and, once :meth:`Encoder.load` ran, gives the
model's official transform (``transform_``: PIL image -> normalized tensor) and
``encode_images(batch) -> float32 [B, d]`` from one object, so preprocessing can never be paired
with the wrong model. Families subclass it and register with :func:`register_family`.
"""
from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Collection

import torch

from ..registry import ModelEntry
from ..validation import VlmprobeError
from .geometry import InputGeometry, input_geometry

FAMILIES: dict[str, type["Encoder"]] = {}


def register_family(cls: type["Encoder"]) -> type["Encoder"]:
    if cls.family in FAMILIES:
        raise RuntimeError(f"model family {cls.family!r} registered twice")
    FAMILIES[cls.family] = cls
    return cls


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Checksum of the weights actually in the model (for seeded or converted weights)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def key_mismatch(source, missing: list[str], unexpected: list[str],
                 shapes: list[str] = ()) -> VlmprobeError:
    """The error for a checkpoint that does not fit the architecture, naming the first missing
    and unexpected keys (and shape mismatches)."""
    parts = [f"{len(keys)} {what} (first: {', '.join(keys[:3])})" for what, keys in
             (("missing keys", missing), ("unexpected keys", unexpected),
              ("shape mismatches", list(shapes))) if keys]
    return VlmprobeError(f"{source} does not fit the architecture: {'; '.join(parts)}. Check that "
                         "the entry's architecture and model_kwargs are the checkpoint's, and "
                         "that weights names the right file.")


def check_state_dict(model: torch.nn.Module, state: dict, source) -> None:
    """Refuse ``state`` unless its keys and shapes are exactly ``model``'s."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise key_mismatch(source, missing, unexpected, shapes)


def state_dict_error(err: Exception, source) -> VlmprobeError | None:
    """A library's strict ``load_state_dict`` failure (torch's message) as :func:`key_mismatch`,
    or None when ``err`` is something else."""
    text = str(err)
    if "Error(s) in loading state_dict" not in text:
        return None
    keys = {what: re.findall(r'"([^"]+)"', m.group(1)) if (m := re.search(
        rf"{what} key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n)", text, re.M | re.S)) else []
        for what in ("Missing", "Unexpected")}
    shapes = re.findall(r"size mismatch for ([^:]+): copying a param with shape (.+?) from "
                        r"checkpoint, the shape in current model is (.+?)\.(?:\s|$)", text)
    return key_mismatch(source, keys["Missing"], keys["Unexpected"],
                        [f"{k} {a} vs {b}" for k, a, b in shapes])


def read_state_dict(path: Path) -> dict:
    """Tensors of a checkpoint file: safetensors, or a torch file read with ``weights_only``
    (a nested ``state_dict`` / ``model`` is unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — pickle and zip errors of many kinds
        raise VlmprobeError(f"{path} is not a checkpoint vlmprobe can read safely (tensors "
                            f"only, weights_only=True): {str(err)[:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


@torch.no_grad()
def randomize_weights(model: torch.nn.Module, seed: int) -> None:
    """Replace every weight by a seeded random one, for the ``<model>_random`` baselines of any
    family: each layer's own ``reset_parameters`` (PyTorch's init, BatchNorm statistics
    included), then N(0, 0.02²) for parameters no layer resets (class tokens, position
    embeddings, projections, layer scales)."""
    torch.manual_seed(seed)
    reset = set()
    for module in model.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            reset.update(id(p) for p in module.parameters(recurse=False))
    for p in model.parameters():
        if id(p) not in reset:
            p.normal_(0.0, 0.02)


class Encoder(ABC):
    """A model family adapter. ``__init__`` only stores; :meth:`load` does the work."""

    family: ClassVar[str]
    #: extra packages the family needs, shown in errors when an import fails
    requires: ClassVar[tuple[str, ...]] = ()
    #: the taps ``_forward`` knows (an entry's ``tap`` must be one), checked before any loading
    taps: ClassVar[Collection[str]]

    def __init__(self, entry: ModelEntry, device: str | torch.device = "cpu"):
        self.entry = entry
        self.device = device

    # -- what a family implements -------------------------------------------------------------
    @abstractmethod
    def _load_model(self) -> torch.nn.Module:
        """Build the model with its weights, through the family's production loading path."""

    @abstractmethod
    def _build_transform(self) -> Callable:
        """The family's own official transform for this model (PIL image -> [3, H, W])."""

    @abstractmethod
    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tap named by ``entry.tap``: pixels [B, 3, H, W] -> features [B, d]."""

    def _forward_taps(self, pixels: torch.Tensor, taps: list[str]) -> dict[str, torch.Tensor]:
        """Several taps from one forward pass. Families whose taps share a pass override this;
        by default a model gives its entry's tap only."""
        if taps != [self.entry.tap]:
            raise VlmprobeError(f"{self.family} models give one tap per forward pass; "
                                f"{self.entry.name!r} gives {self.entry.tap!r}, not "
                                f"{', '.join(t for t in taps if t != self.entry.tap)}. Add a "
                                "registry entry per tap instead.")
        return {self.entry.tap: self._forward(pixels)}

    @abstractmethod
    def _weights_sha256(self) -> str:
        """sha256 of the weights file loaded (or of the state dict when there is no file)."""

    @classmethod
    def needed_files(cls, entry: ModelEntry) -> list[tuple[str, tuple[str, ...]]]:
        """``(hub repo or local path, alternative file names)`` a load reads: what
        ``vlmprobe models --check`` looks for in the caches, without downloading."""
        return []

    # -- shared behaviour ---------------------------------------------------------------------
    def load(self) -> "Encoder":
        from .fetch import verified_snapshots
        from .hub import local_weights

        if self.entry.tap not in self.taps:
            raise VlmprobeError(f"{self.family} entry {self.entry.name!r}: tap "
                                f"{self.entry.tap!r} unknown; valid: {', '.join(self.taps)}.")
        #: the verified snapshot folder of each repo the model's lock names (models fetch)
        self.snapshots_ = {} if self.entry.weights else verified_snapshots(self.entry)
        #: a local checkpoint file or snapshot directory to read instead of the hub, or None
        self.local_ = local_weights(self.entry) or self.snapshots_.get(
            self.repo_of(self.entry.source))
        self.model_ = self._load_model().eval()
        if self.entry.random_init:
            # on the CPU, then moved: CUDA's generator draws other numbers from the same seed,
            # and a twin must be the same weights on every device (RISE checks them against the
            # cache, which may have been extracted elsewhere)
            randomize_weights(self.model_.cpu(), self.entry.seed or 0)
            self.weights_sha256_ = state_dict_sha256(self.model_)
        self.model_ = self.model_.to(self.device)
        self.transform_ = self._build_transform()
        if not self.entry.random_init:
            self.weights_sha256_ = self._weights_sha256()
        return self

    def location(self, repo: str) -> str:
        """Where the files of hub repo ``repo`` are read from: its locked snapshot folder, or
        the entry's local snapshot directory for its own repo, else the repo (hub, HF cache)."""
        snapshots, local = getattr(self, "snapshots_", {}), getattr(self, "local_", None)
        if repo in snapshots:
            return str(snapshots[repo])
        return str(local) if local is not None and local.is_dir() and repo == self.repo_of(
            self.entry.source) else repo

    @staticmethod
    def repo_of(source: str) -> str:
        """The hub repo id of a ``source`` (``hf-hub:org/name``, ``hf_hub:org/name``, ...)."""
        return source.split(":", 1)[1] if source.startswith(("hf-hub:", "hf_hub:", "timm:")) \
            else source

    def local_file(self, names: tuple[str, ...]) -> Path:
        """The checkpoint file of a local ``weights`` entry: the file itself, or the first of
        ``names`` (the library's own order) in the snapshot directory."""
        if self.local_.is_file():
            return self.local_
        found = next((self.local_ / n for n in names if (self.local_ / n).is_file()), None)
        if found is None:
            raise VlmprobeError(f"Model {self.entry.name!r}: weights directory {self.local_} "
                                f"holds none of {', '.join(names)}.")
        return found

    @property
    def preprocess_cfg(self):
        return self.entry.preprocess

    @property
    def embed_dim(self) -> int:
        return self.entry.embed_dim

    def geometry(self, width: int, height: int) -> InputGeometry:
        return input_geometry(self.entry.preprocess, width, height)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [B, 3, H, W] -> float32 embeddings [B, d] on the model's device."""
        return self.encode_taps(pixels, [self.entry.tap])[self.entry.tap]

    @torch.no_grad()
    def encode_taps(self, pixels: torch.Tensor, taps: list[str]) -> dict[str, torch.Tensor]:
        """float32 [B, d_tap] for each of ``taps`` (the family's names), from one forward pass."""
        if not hasattr(self, "model_"):
            raise VlmprobeError(f"Encoder {self.entry.name!r} is not loaded; call .load() first.")
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise VlmprobeError(f"{self.family} model {self.entry.name!r}: tap(s) "
                                f"{', '.join(unknown)} unknown; valid: {', '.join(self.taps)}.")
        out = self._forward_taps(pixels.to(self.device, non_blocking=True), list(taps))
        feats = {t: out[t].float() for t in taps}
        for t, f in feats.items():
            dim = self.entry.embed_dim if t == self.entry.tap else None  # the registry's own tap
            if f.ndim != 2 or (dim is not None and f.shape[1] != dim):
                raise VlmprobeError(
                    f"Model {self.entry.name!r} tap {t!r} gave features of shape "
                    f"{tuple(f.shape)}, but the registry says embed_dim={dim} (taps other than "
                    "the entry's must give [batch, d]). Fix embed_dim or tap in the registry "
                    "entry.")
        return feats

    def describe(self) -> dict:
        """Provenance of this encoder: the entry, preprocessing, weights checksum."""
        return {"model": self.entry.name, "family": self.family, "entry": self.entry.to_dict(),
                "weights_sha256": getattr(self, "weights_sha256_", None),
                "transform": repr(getattr(self, "transform_", None))}
