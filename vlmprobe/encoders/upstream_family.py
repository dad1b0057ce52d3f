"""Models whose code is not on PyPI (CONCH, FLAIR, CXR-CLIP, UniMed-CLIP): the adapter calls the
upstream package's own public API, which the user installs from its repository.

Upstream code is never copied into vlmprobe (CONCH's licence forbids modified copies; the others
are not packaged). Each entry names its API in ``model_kwargs.api``; the calls below mirror the
upstream commits named in ``UPSTREAM``. An entry's local ``weights`` (the checkpoint file, or
the folder holding it) is handed to the same upstream call instead of the hub repo. vlmprobe's tests drive them against stand-in modules that
mimic those signatures only, so ``vlmprobe models --check`` says that these load paths are not
verified against upstream code.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..provenance import sha256_file
from ..validation import VlmprobeError
from .base import Encoder, register_family, state_dict_sha256
from .hub import hub_file

WEIGHTS_ENV = "VLMPROBE_WEIGHTS"
NOT_VERIFIED = "load path not verified against upstream code (tested on stand-ins only)"


@dataclass(frozen=True)
class UpstreamApi:
    module: str  # what to import
    commit: str  # the upstream commit whose signatures the calls mirror
    load: Callable  # (encoder, module) -> (model, transform)
    forward: Callable  # (model, pixels) -> features


def _hub_source(encoder) -> str:
    source = encoder.entry.source
    if not source.startswith("hf_hub:"):
        raise VlmprobeError(f"upstream entry {encoder.entry.name!r}: source {source!r} must read "
                            "hf_hub:<org>/<repo>.")
    return source


def file_source(entry) -> Path:
    """``file:<path>``: absolute, or relative to ``$VLMPROBE_WEIGHTS`` (default ~/.cache/vlmprobe/weights)."""
    path = Path(entry.source.removeprefix("file:")).expanduser()
    if not path.is_absolute():
        path = Path(os.environ.get(WEIGHTS_ENV, "~/.cache/vlmprobe/weights")).expanduser() / path
    return path


def _load_conch(enc, conch):
    """mahmoodlab/CONCH: ``create_model_from_pretrained(cfg, 'hf_hub:MahmoodLab/conch',
    hf_auth_token=...)`` -> (model, preprocess); weights are the repo's ``pytorch_model.bin``."""
    from huggingface_hub import get_token, try_to_load_from_cache

    if enc.local_ is not None:  # its checkpoint_path may be a local file as well as hf_hub:
        enc._weights_file = str(enc.local_file(("pytorch_model.bin",)))
        return conch.create_model_from_pretrained(enc.entry.architecture, enc._weights_file,
                                                  device=enc.device)
    source = _hub_source(enc)
    model, preprocess = conch.create_model_from_pretrained(
        enc.entry.architecture, source, device=enc.device, hf_auth_token=get_token())
    path = try_to_load_from_cache(source[len("hf_hub:"):], "pytorch_model.bin")
    enc._weights_file = path if isinstance(path, str) else None
    return model, preprocess


def _load_flair(enc, flair):
    """jusiro/FLAIR: ``FLAIRModel.from_pretrained(repo)`` (huggingface_hub mixin); its own
    ``preprocess_image`` (/255, longer side to 512, zero-pad right/bottom) is the transform."""
    if enc.local_ is not None and not enc.local_.is_dir():
        raise VlmprobeError(f"Model {enc.entry.name!r}: FLAIR loads a folder (config.json and "
                            f"the weights, as from_pretrained reads it), not {enc.local_}.")
    model = flair.FLAIRModel.from_pretrained(enc.location(_hub_source(enc)[len("hf_hub:"):]))

    def transform(image):
        return model.preprocess_image(np.asarray(image.convert("RGB")))[0].cpu()
    return model, transform


def _load_cxrclip(enc, cxrclip_model):
    """kakaobrain/cxr-clip: ``build_model(ckpt['config']['model'], ckpt['config']['loss'],
    tokenizer)`` then ``load_state_dict(ckpt['model'], strict=False)``, as its Evaluator does."""
    from torchvision import transforms as T
    from transformers import AutoTokenizer

    path = enc.local_ if enc.local_ is not None else file_source(enc.entry)
    if not path.is_file():
        raise VlmprobeError(f"Model {enc.entry.name!r}: checkpoint {path} not found. CXR-CLIP "
                            "checkpoints are not on the hub: download one from the links in "
                            f"https://github.com/kakaobrain/cxr-clip and put it there (or set "
                            f"${WEIGHTS_ENV}).")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    tokenizer = AutoTokenizer.from_pretrained(enc.entry.model_kwargs.get(
        "tokenizer", "emilyalsentzer/Bio_ClinicalBERT"))
    model = cxrclip_model.build_model(model_config=ckpt["config"]["model"],
                                      loss_config=ckpt["config"]["loss"], tokenizer=tokenizer)
    model.load_state_dict(ckpt["model"], strict=False)
    enc._weights_file = str(path)
    p = enc.entry.preprocess  # CXR-CLIP's eval transform lives in its data config, not an API
    transform = T.Compose([T.Resize(p.resize_size or p.image_size, T.InterpolationMode(
        p.interpolation)), T.CenterCrop(p.image_size), T.ToTensor(), T.Normalize(p.mean, p.std)])
    return model, transform


def _is_unimed_fork(module) -> bool:
    """UniMed-CLIP's fork and PyPI's open_clip share the import name; only the fork's
    create_model_and_transforms takes a text_encoder_name."""
    import inspect

    create = getattr(module, "create_model_and_transforms", None)
    return create is not None and "text_encoder_name" in inspect.signature(create).parameters


def _load_unimedclip(enc, open_clip_fork):
    """mbzuai-oryx/UniMed-CLIP's open_clip fork: ``create_model_and_transforms(arch, <.pt>,
    force_quick_gelu=True, mean=..., std=..., inmem=True, text_encoder_name=...)``."""
    create = open_clip_fork.create_model_and_transforms
    if not _is_unimed_fork(open_clip_fork):
        raise VlmprobeError(f"Model {enc.entry.name!r}: the imported {open_clip_fork.__name__!r} "
                            "is PyPI's open_clip, not UniMed-CLIP's fork; install the fork: "
                            f"{enc.entry.install}")
    e = enc.entry
    if not e.weights_file:
        raise VlmprobeError(f"upstream entry {e.name!r}: weights_file (the .pt in "
                            f"{e.source}) is not recorded; set it in the registry entry.")
    path = (str(enc.local_file((e.weights_file,))) if enc.local_ is not None
            else hub_file(e, _hub_source(enc)[len("hf_hub:"):], e.weights_file))
    mean, std = open_clip_fork.get_mean_std()
    model, _, preprocess = create(e.architecture, path, device=enc.device, force_quick_gelu=True,
                                  mean=mean, std=std, inmem=True,
                                  text_encoder_name=e.model_kwargs["text_encoder_name"])
    enc._weights_file = path
    return model, preprocess


UPSTREAM = {
    "conch": UpstreamApi("conch.open_clip_custom", "mahmoodlab/CONCH@3a919e39", _load_conch,
                         lambda m, x: m.encode_image(x, proj_contrast=False, normalize=False)),
    "flair": UpstreamApi("flair", "jusiro/FLAIR@04c2fd54", _load_flair,
                         lambda m, x: m.vision_model(x)),
    "cxrclip": UpstreamApi("cxrclip.model", "kakaobrain/cxr-clip@fd9fac5e", _load_cxrclip,
                           lambda m, x: m.image_projection(m.encode_image(x))),
    "unimedclip": UpstreamApi("open_clip", "mbzuai-oryx/UniMed-CLIP@6f091778", _load_unimedclip,
                              lambda m, x: m.encode_image(x)),
}


def _api(entry) -> UpstreamApi:
    name = entry.model_kwargs.get("api")
    if name not in UPSTREAM:
        raise VlmprobeError(f"upstream entry {entry.name!r}: model_kwargs.api={name!r}; valid: "
                            f"{', '.join(UPSTREAM)}.")
    return UPSTREAM[name]


def _module_name(entry) -> str:
    return entry.model_kwargs.get("module", _api(entry).module)


@register_family
class UpstreamEncoder(Encoder):
    """An upstream repository's own loading API (``model_kwargs.api``), installed by the user."""

    family = "upstream"
    check_notes = (NOT_VERIFIED,)
    taps = ("encode_image",)  # the upstream image embedding call

    @classmethod
    def missing_requirement(cls, entry) -> str | None:
        """Why the upstream package cannot be used here (for ``models --check``), or None."""
        try:
            if importlib.util.find_spec(_module_name(entry).split(".")[0]) is None:
                return f"upstream package missing: {entry.install}"
            if entry.model_kwargs.get("api") == "unimedclip" and not entry.weights_file:
                return "the entry records no weights_file (the .pt in its hub repo)"
            if entry.model_kwargs.get("api") == "unimedclip" and not _is_unimed_fork(
                    importlib.import_module(_module_name(entry))):
                return f"PyPI's open_clip is installed, not UniMed-CLIP's fork: {entry.install}"
        except VlmprobeError as err:
            return str(err)
        return None

    @classmethod
    def needed_files(cls, entry):
        if entry.source.startswith("file:"):
            path = file_source(entry)
            return [(str(path.parent), (path.name,))]
        repo = entry.source.removeprefix("hf_hub:")
        files = {"conch": ("pytorch_model.bin",), "flair": ("model.safetensors", "pytorch_model.bin")}
        names = files.get(entry.model_kwargs.get("api")) or ((entry.weights_file,)
                                                              if entry.weights_file else ())
        needs = [(repo, names)] if names else []
        configs = {"conch": ("meta.yaml",), "flair": ("config.json",)}  # what their loaders read
        if entry.model_kwargs.get("api") in configs:
            needs.append((repo, configs[entry.model_kwargs["api"]]))
        return needs

    def _load_model(self):
        api, e = _api(self.entry), self.entry
        try:
            module = importlib.import_module(_module_name(e))
        except ImportError as err:
            raise VlmprobeError(f"Model {e.name!r} needs its upstream code ({err}), which is not "
                                f"on PyPI: {e.install}") from None
        self._weights_file = None
        try:
            model, self._transform = api.load(self, module)
        except (OSError, ValueError) as err:
            raise VlmprobeError(f"Model {e.name!r}: the upstream loader ({api.commit}) failed: "
                                f"{err}") from None
        return model

    def _build_transform(self):
        return self._transform

    def _forward(self, pixels):
        return _api(self.entry).forward(self.model_, pixels)

    def _weights_sha256(self):
        if self._weights_file:
            return sha256_file(self._weights_file)
        return state_dict_sha256(self.model_)
