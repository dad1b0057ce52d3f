"""open_clip models from a hub repo: ``source: hf-hub:<org>/<repo>``.

open_clip reads the repo's ``open_clip_config.json`` (architecture and ``preprocess_cfg``) and
its weights, ``open_clip_model.safetensors`` if present, else ``open_clip_pytorch_model.bin``.
open_clip's own pretrained tags (``ViT-L-14-quickgelu`` + ``openai``) resolve to such repos
(``get_pretrained_cfg(...)['hf_hub']``) and load the same weights file into a built-in
architecture config; an entry that names that config in ``architecture`` gets the same model:
QuickGELU is forced when the built-in config has it, and the load stops if the repo's image
tower config differs from the built-in one. The preprocessing open_clip builds must equal the
entry's facts (they drive geometry and the cache key), else the load stops too.
A text tower from transformers (``text_cfg.hf_model_name``, e.g. BiomedBERT for BiomedCLIP) also
needs that other repo's ``config.json``, even though its weights come from the CLIP checkpoint.

An entry's local ``weights`` is a snapshot directory as the hub repo holds it (read by
open_clip's own ``local-dir:`` loader, checked as the hub repo would be) or a checkpoint file
loaded into the built-in config ``architecture`` names.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..provenance import sha256_file
from ..validation import VlmprobeError
from .base import Encoder, register_family, state_dict_error
from .hub import hub_file, hub_fix_hint, import_family_package, weights_sha256

HF_HUB_PREFIX = "hf-hub:"
CONFIG_NAME = "open_clip_config.json"


def _text_tower_repo(repo_id: str) -> str | None:
    """The HF text tower repo named by the cached ``open_clip_config.json``, if it is cached."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, CONFIG_NAME)
    if not isinstance(path, str):
        return None
    return json.loads(Path(path).read_text())["model_cfg"]["text_cfg"].get("hf_model_name")


def _image_tower(model_cfg: dict) -> dict:
    """What of an open_clip model config shapes ``encode_image`` (the text tower does not;
    ``timm_model_pretrained`` is overridden by open_clip when it loads a checkpoint)."""
    vision = {k: v for k, v in model_cfg["vision_cfg"].items() if k != "timm_model_pretrained"}
    return {"embed_dim": model_cfg["embed_dim"], "quick_gelu": model_cfg.get("quick_gelu", False),
            "vision_cfg": vision}


@register_family
class OpenClipEncoder(Encoder):
    """``open_clip.create_model_from_pretrained(source)``; its returned transform is the official one."""

    family = "open_clip"
    requires = ("open_clip_torch",)
    taps = ("encode_image",)

    @classmethod
    def needed_files(cls, entry):
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo = cls(entry).repo_id
        text = _text_tower_repo(repo)
        return [(repo, (CONFIG_NAME,)), (repo, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)),
                *([(text, ("config.json",))] if text else [])]

    @property
    def repo_id(self) -> str:
        e = self.entry
        if not e.source.startswith(HF_HUB_PREFIX):
            raise VlmprobeError(f"open_clip entry {e.name!r}: source {e.source!r} must read "
                                "hf-hub:<org>/<repo> (the repo open_clip's pretrained tag names: "
                                "open_clip.pretrained.get_pretrained_cfg(arch, tag)['hf_hub']).")
        return e.source.removeprefix(HF_HUB_PREFIX)

    def _builtin_tower(self, open_clip) -> dict | None:
        """The image tower of the built-in config ``architecture`` names, if it names one."""
        e = self.entry
        if not e.architecture:
            return None
        cfg = open_clip.get_model_config(e.architecture)
        if cfg is None:
            raise VlmprobeError(f"open_clip entry {e.name!r}: open_clip {open_clip.__version__} "
                                f"has no model config {e.architecture!r}; see "
                                "open_clip.list_models() (names drift between releases).")
        return _image_tower(cfg)

    def _check_tower(self, builtin: dict | None, repo: str) -> None:
        if builtin is None:
            return
        config = hub_file(self.entry, self.location(repo), CONFIG_NAME)
        hub = _image_tower(json.loads(Path(config).read_text())["model_cfg"])
        hub["quick_gelu"] = hub["quick_gelu"] or builtin["quick_gelu"]  # forced, see _load_model
        if hub != builtin:
            diff = {k: (hub[k], builtin[k]) for k in hub if hub[k] != builtin[k]}
            raise VlmprobeError(
                f"open_clip entry {self.entry.name!r}: {repo}'s {CONFIG_NAME} describes another "
                f"image tower than open_clip's built-in {self.entry.architecture!r} "
                f"(hub, built-in): {diff}. The repo changed, or the entry names the wrong "
                "architecture; check both before trusting its embeddings.")

    def _check_preprocess(self, model) -> None:
        """open_clip's preprocessing for this model must be the entry's facts."""
        from open_clip import get_model_preprocess_cfg

        p, cfg = self.entry.preprocess, get_model_preprocess_cfg(model)
        size = cfg["size"] if isinstance(cfg["size"], int) else tuple(cfg["size"])
        theirs = {"image_size": size, "resize": cfg.get("resize_mode", "shortest"),
                  "interpolation": cfg.get("interpolation", "bicubic"),
                  "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
        ours = {"image_size": p.image_size if isinstance(size, int) else (p.image_size,) * 2,
                "resize": p.resize, "interpolation": p.interpolation, "mean": p.mean, "std": p.std}
        if p.resize == "shortest" and (p.resize_size or p.image_size) != p.image_size:
            ours["resize"] = f"shortest to {p.resize_size} (open_clip resizes to the crop size)"
        bad = {k: (theirs[k], ours[k]) for k in ours
               if not (theirs[k] == ours[k] or (k in ("mean", "std") and all(
                   math.isclose(a, b, abs_tol=1e-7) for a, b in zip(theirs[k], ours[k]))))}
        if bad:
            raise VlmprobeError(f"open_clip entry {self.entry.name!r}: open_clip's preprocessing "
                                f"differs from the entry's preprocess facts (open_clip, entry): "
                                f"{bad}. Fix the entry's preprocess block.")

    def _load_model(self):
        e = self.entry
        repo = self.repo_id
        if e.revision:
            # open_clip's hf-hub loader always reads the default branch: a pin would be ignored.
            raise VlmprobeError(f"open_clip entry {e.name!r}: open_clip cannot load a hub "
                                f"revision ({e.revision!r}); remove 'revision' from the entry.")
        open_clip = import_family_package(self, "open_clip")
        builtin = self._builtin_tower(open_clip)
        if self.local_ is not None and self.local_.is_file():
            return self._load_file(open_clip, builtin)
        self._check_tower(builtin, repo)
        name = f"local-dir:{self.local_}" if self.local_ is not None else e.source
        try:
            model, self._transform = open_clip.create_model_from_pretrained(
                name, device=self.device, return_transform=True,
                force_quick_gelu=bool(builtin and builtin["quick_gelu"]))
        except (OSError, RuntimeError, ValueError) as err:
            repos = [repo, *filter(None, [_text_tower_repo(repo)])]
            raise state_dict_error(err, name) or VlmprobeError(
                f"open_clip could not load {name!r}: {err}\n{hub_fix_hint(e, *repos)}") from None
        self._check_preprocess(model)
        return model

    def _load_file(self, open_clip, builtin: dict | None):
        """A checkpoint file in the built-in config ``architecture`` names (QuickGELU as it)."""
        e = self.entry
        if builtin is None:
            raise VlmprobeError(f"open_clip entry {e.name!r}: a weights file needs the entry's "
                                "architecture (the open_clip config it was saved from, e.g. "
                                "ViT-B-16); or give the snapshot directory with its "
                                f"{CONFIG_NAME}.")
        try:
            model, self._transform = open_clip.create_model_from_pretrained(
                e.architecture, pretrained=str(self.local_), device=self.device,
                return_transform=True, force_quick_gelu=builtin["quick_gelu"])
        except (OSError, RuntimeError, ValueError) as err:
            raise state_dict_error(err, self.local_) or VlmprobeError(
                f"open_clip could not load {self.local_} as {e.architecture}: {err}") from None
        self._check_preprocess(model)
        return model

    def _build_transform(self):
        return self._transform

    def _forward(self, pixels):
        return self.model_.encode_image(pixels, normalize=False)

    def _weights_sha256(self):
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        if self.local_ is not None and self.local_.is_file():
            return sha256_file(self.local_)
        return weights_sha256(self.location(self.repo_id), (HF_SAFE_WEIGHTS_NAME,
                                                             HF_WEIGHTS_NAME), None, self.model_)
