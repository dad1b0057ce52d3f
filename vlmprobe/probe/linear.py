"""The saved probe: scaler + linear classifier as plain arrays (npz + JSON, no pickle), the black
box RISE explains, and where it is saved."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import Cache, stage_dir
from ..cache.chunks import write_atomic, written_beside
from ..validation import VlmprobeError, read_npz


@dataclass
class LinearProbe:
    """Scaler + linear SVM as plain arrays: decision = ((x - mean) / scale) @ coef.T + intercept."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray       # [K, d] (K = 1 for a binary SVM)
    intercept: np.ndarray  # [K]
    class_names: list[str]
    info: dict = field(default_factory=dict)

    def decision_function(self, X):
        """Per-class scores [B, n_classes]; binary SVMs give (-f, f). Works on numpy or torch."""
        z = (X - self._like(self.mean, X)) / self._like(self.scale, X)
        f = z @ self._like(self.coef, X).T + self._like(self.intercept, X)
        return stack_binary(f) if self.coef.shape[0] == 1 else f

    @staticmethod
    def _like(a, X):
        if isinstance(X, np.ndarray):
            return a
        import torch
        return torch.as_tensor(a, dtype=X.dtype, device=X.device)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.decision_function(X)).argmax(1)

    def save(self, stem: Path) -> Path:
        """Write ``<stem>.npz`` (arrays) and ``<stem>.json`` (class names, C, provenance)."""
        npz, sidecar = _stem_files(stem)
        npz.parent.mkdir(parents=True, exist_ok=True)
        with written_beside(npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept)
        write_atomic(sidecar, json.dumps({"class_names": self.class_names, **self.info}, indent=2,
                                         default=str))
        return npz

    @classmethod
    def load(cls, stem: Path) -> "LinearProbe":
        npz, sidecar = _stem_files(stem)
        if not npz.is_file():
            raise VlmprobeError(f"No saved probe at {npz}; run `vlmprobe probe` on this cache first.")
        arrays = read_npz(npz, "saved probe", "run `vlmprobe probe` on the cache again.")
        info = json.loads(sidecar.read_text())
        return cls(arrays["mean"], arrays["scale"], arrays["coef"], arrays["intercept"],
                   info.pop("class_names"), info)


def _stem_files(stem: Path) -> tuple[Path, Path]:
    """Stems like ``model.label-word`` keep their dots (no ``with_suffix``)."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def stack_binary(f):
    if isinstance(f, np.ndarray):
        return np.concatenate([-f, f], axis=1)
    import torch
    return torch.cat([-f, f], dim=1)


def probe_path(cache: Cache, label_view: str, out_dir: Path | None = None) -> Path:
    suffix = "" if label_view == "class" else f".label-{label_view}"
    return (stage_dir(cache.path, cache.dataset, "probe", out_dir)
            / f"{cache.output_name}{suffix}")
