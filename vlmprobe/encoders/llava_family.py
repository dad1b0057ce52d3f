"""The CLIP vision tower (and multimodal projector) of a LLaVA-style checkpoint, without the LLM.

Why not ``from_pretrained``: LLaVA-Med's ``config.json`` says ``model_type: llava_mistral``, a
type only LLaVA-Med's own code registers (it pins transformers 4.36), so every stock transformers
refuses the repo (LLaVA-Med #95/#133, transformers #37087). The checkpoint's tensors are plain
safetensors, though. This family reads ``config.json`` as JSON (never through ``AutoConfig``),
builds a stock ``CLIPVisionModel`` from the tower's config (``vision_config`` inside the
checkpoint's config, or the ``config.json`` of the repo named by ``processor_source``, e.g.
``openai/clip-vit-large-patch14-336`` that LLaVA-Med's ``mm_vision_tower`` names), and loads only
the tensors under the entry's ``tower_prefix`` / ``projector_prefix`` from the shards that hold
them. Only ``CLIPVisionConfig``/``CLIPVisionModel`` and safetensors are used, so transformers
upgrades do not break it, and the 7B language model is never read.

Taps (LLaVA's own feature selection: ``hidden_states[select_layer]``, patch tokens without CLS):
``tower`` = mean over those tokens (the CLIP tower's width), ``projector`` = the trained
``mm_projector`` applied to them, then the mean (the LLM's width). With
``model_kwargs.s2_scales`` (LLaVA-Med++), the tokens are LLaVA-S2's: ``s2wrapper.forward`` runs the
tower on 336-px tiles of the image at each scale and concatenates the channels (3 x 1024).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import torch
from torch import nn

from ..validation import VlmprobeError
from .base import Encoder, register_family, state_dict_sha256
from .hf_family import ProcessorTransform
from .hub import hub_file, import_family_package

TAPS = ("tower", "projector")
S2_INSTALL = "pip install git+https://github.com/bfshi/scaling_on_scales.git"
_DEFAULT_LAYER_KEYS = ("mm_vision_select_layer", "vision_feature_layer")


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


_ACTS = {"gelu": nn.GELU}


def _projector(tensors: dict[str, torch.Tensor], act: str) -> nn.Sequential:
    """LLaVA's projector from its tensors: Linear layers in key order with ``act`` between
    (``mm_projector.{0,2}`` for ``mlp2x_gelu``, ``linear_{1,2}`` in llava-hf, one for ``linear``)."""
    if act not in _ACTS:
        raise VlmprobeError(f"LLaVA projector activation {act!r} is not supported; known: "
                            f"{', '.join(_ACTS)}.")
    names = sorted({k.rsplit(".", 1)[0] for k in tensors}, key=_natural_key)
    layers: list[nn.Module] = []
    for i, name in enumerate(names):
        w = tensors[f"{name}.weight"]
        linear = nn.Linear(w.shape[1], w.shape[0], bias=f"{name}.bias" in tensors)
        linear.load_state_dict({k.rsplit(".", 1)[1]: v for k, v in tensors.items()
                                if k.rsplit(".", 1)[0] == name})
        layers += [linear] if i == 0 else [_ACTS[act](), linear]
    return nn.Sequential(*layers)


class LlavaTower(nn.Module):
    """CLIP vision tower + projector; ``forward`` returns LLaVA's selected patch features."""

    def __init__(self, tower: nn.Module, projector: nn.Module | None, select_layer: int,
                 keep_cls: bool):
        super().__init__()
        self.tower, self.projector = tower, projector
        self.select_layer, self.keep_cls = select_layer, keep_cls

    def forward(self, pixels):
        hidden = self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        feats = hidden[self.select_layer]
        return feats if self.keep_cls else feats[:, 1:]


@register_family
class LlavaTowerEncoder(Encoder):
    """Vision tower of a LLaVA / LLaVA-Med checkpoint (``model_kwargs``: ``tower_prefix``,
    ``projector_prefix``, optional ``select_layer``, ``select_feature``: patch | cls_patch,
    ``s2_scales``)."""

    family = "llava_tower"
    requires = ("transformers", "safetensors")
    taps = TAPS

    @classmethod
    def needed_files(cls, entry):
        """The config, the weight index (once cached: the shards holding the tower and
        projector tensors, never the LLM-only ones) and the tower's preprocessor config."""
        from huggingface_hub import try_to_load_from_cache

        tower_repo = entry.processor_source or entry.source
        needs = [(entry.source, ("config.json",)),
                 (entry.source, ("model.safetensors.index.json", "model.safetensors")),
                 (tower_repo, ("preprocessor_config.json",))]
        index = try_to_load_from_cache(entry.source, "model.safetensors.index.json",
                                       revision=entry.revision)
        if isinstance(index, str):
            prefixes = tuple(entry.model_kwargs.get(k) for k in ("tower_prefix", "projector_prefix")
                             if entry.model_kwargs.get(k))
            shards = {f for k, f in _read_json(index)["weight_map"].items()
                      if k.startswith(prefixes)}
            needs += [(entry.source, (shard,)) for shard in sorted(shards)]
        return needs

    @classmethod
    def missing_requirement(cls, entry) -> str | None:
        if entry.model_kwargs.get("s2_scales") and importlib.util.find_spec("s2wrapper") is None:
            return f"S2 features need s2wrapper (not on PyPI): {S2_INSTALL}"
        return None

    def _kw(self, key, default=None):
        value = self.entry.model_kwargs.get(key, default)
        if value is None:
            raise VlmprobeError(f"llava_tower entry {self.entry.name!r}: model_kwargs.{key} is "
                                "required (the checkpoint key prefix, e.g. "
                                "'model.vision_tower.vision_tower.vision_model.').")
        return value

    def _tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix`` (prefix stripped), read only from the shards that hold them."""
        from safetensors import safe_open

        e = self.entry
        source = self.location(e.source)
        index = hub_file(e, source, "model.safetensors.index.json", e.revision, required=False)
        if index is not None:
            weight_map = _read_json(index)["weight_map"]
            shards = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
        else:
            shards = ["model.safetensors"]
        out = {}
        for shard in shards:
            path = hub_file(e, source, shard, e.revision)
            self._files.append(path)
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = f.get_tensor(key)
        if not out:
            raise VlmprobeError(
                f"llava_tower entry {e.name!r}: {e.source} has no tensors under {prefix!r}. "
                "Check model_kwargs prefixes against the checkpoint's keys; a checkpoint saved "
                "without its (frozen) tower is the tower of its mm_vision_tower repo instead.")
        return out

    def _tower_config(self, config: dict):
        from transformers import CLIPVisionConfig

        if "vision_config" in config:
            return CLIPVisionConfig(**config["vision_config"])
        e = self.entry
        repo = e.processor_source or config.get("mm_vision_tower")
        if not repo:
            raise VlmprobeError(f"llava_tower entry {e.name!r}: config.json has neither "
                                "vision_config nor mm_vision_tower; set processor_source to the "
                                "CLIP repo of the tower.")
        tower_cfg = _read_json(hub_file(e, self.location(repo), "config.json"))
        return CLIPVisionConfig(**tower_cfg.get("vision_config", tower_cfg))

    def _load_model(self):
        e = self.entry
        transformers = import_family_package(self, "transformers")
        if self.local_ is not None and not self.local_.is_dir():
            raise VlmprobeError(f"llava_tower entry {e.name!r}: weights {self.local_} is a file; "
                                "give the checkpoint's snapshot directory (config.json and the "
                                "safetensors shards).")
        self._files = []  # the shards read, for provenance and tests
        config = _read_json(hub_file(e, self.location(e.source), "config.json", e.revision))
        tower = transformers.CLIPVisionModel(self._tower_config(config))
        state = self._tensors(self._kw("tower_prefix"))
        state.pop("embeddings.position_ids", None)  # a buffer old transformers saved
        try:
            missing, unexpected = tower.vision_model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch: the config is not this tower's
            raise VlmprobeError(f"llava_tower entry {e.name!r}: the checkpoint's tower does not "
                                f"fit its CLIP config: {str(err)[:300]}") from None
        if missing or unexpected:
            raise VlmprobeError(
                f"llava_tower entry {e.name!r}: the tensors under {self._kw('tower_prefix')!r} do "
                f"not fit the CLIP tower config (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); wrong prefix or processor_source.")
        projector = None
        if e.tap == "projector":
            act = config.get("projector_hidden_act", "gelu")
            projector = _projector(self._tensors(self._kw("projector_prefix")), act)
        layer = e.model_kwargs.get("select_layer")
        if layer is None:
            layer = next((config[k] for k in _DEFAULT_LAYER_KEYS if k in config), -2)
        feature = e.model_kwargs.get("select_feature", config.get("mm_vision_select_feature",
                                                                     "patch"))
        if feature not in ("patch", "cls_patch"):
            raise VlmprobeError(f"llava_tower entry {e.name!r}: select_feature {feature!r} "
                                "unknown; valid: patch, cls_patch.")
        if e.model_kwargs.get("s2_scales"):
            try:
                self._s2 = importlib.import_module("s2wrapper")
            except ImportError:
                raise VlmprobeError(f"Model {e.name!r} uses S2 multi-scale features, which need "
                                    f"s2wrapper (not on PyPI): {S2_INSTALL}") from None
        return LlavaTower(tower, projector, int(layer), feature == "cls_patch")

    def _build_transform(self):
        """transformers' LlavaImageProcessor over the tower's CLIP preprocessor config: LLaVA's
        ``expand2square`` (pad with the mean colour) when the entry pads, then resize + crop."""
        from transformers import LlavaImageProcessor

        e = self.entry
        repo = e.processor_source or e.source
        path = hub_file(e, self.location(repo), "preprocessor_config.json")
        # LLaVA-S2 resizes and crops to its largest scale, as its CLIPVisionTowerS2 sets
        size = max(e.model_kwargs.get("s2_scales") or [0]) or None
        overrides = ({"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
                     if size else {})
        processor = LlavaImageProcessor.from_pretrained(
            str(Path(path).parent), do_pad=e.preprocess.resize == "pad_square", **overrides)
        fill = tuple(int(x * 255) for x in processor.image_mean)  # LLaVA's expand2square colour
        if processor.do_pad and fill != tuple(e.preprocess.pad_color):
            raise VlmprobeError(f"llava_tower entry {e.name!r}: preprocess.pad_color "
                                f"{list(e.preprocess.pad_color)} differs from the colour LLaVA "
                                f"pads with, {list(fill)} (the processor's mean); fix the entry.")
        return ProcessorTransform(processor)

    def _forward(self, pixels):
        scales = self.entry.model_kwargs.get("s2_scales")
        if scales:  # LLaVA-S2: the tower on 336-px tiles at every scale, channels concatenated
            feats = self._s2.forward(self.model_, pixels, img_sizes=list(scales),
                                     max_split_size=min(scales))
        else:
            feats = self.model_(pixels)
        if self.model_.projector is not None:
            feats = self.model_.projector(feats)
        return feats.mean(dim=1)

    def _weights_sha256(self):
        # Over the loaded tower (and projector) tensors: the shards are mostly LLM weights.
        return state_dict_sha256(self.model_)
