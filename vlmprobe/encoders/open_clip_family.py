"""open_clip models: a hub repo (``source: hf-hub:<org>/<repo>``) or one of open_clip's own
pretrained tags (``architecture: ViT-B-16-quickgelu``, ``source: open_clip:openai``).

open_clip maps a pretrained tag to a hub repo too (``get_pretrained_cfg(...)['hf_hub']``), so both
read the HF cache. For a repo it reads the repo's ``open_clip_config.json`` (architecture and ``preprocess_cfg``) and
its weights, ``open_clip_model.safetensors`` if present, else ``open_clip_pytorch_model.bin``.
A text tower from transformers (``text_cfg.hf_model_name``, e.g. BiomedBERT for BiomedCLIP) also
needs that other repo's ``config.json``, even though its weights come from the CLIP checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..validation import VlmprobeError
from .base import Encoder, register_family
from .hub import cached_weights_sha256, hub_fix_hint, import_family_package

HF_HUB_PREFIX = "hf-hub:"
TAG_PREFIX = "open_clip:"


def _text_tower_repo(repo_id: str) -> str | None:
    """The HF text tower repo named by the cached ``open_clip_config.json``, if it is cached."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "open_clip_config.json")
    if not isinstance(path, str):
        return None
    return json.loads(Path(path).read_text())["model_cfg"]["text_cfg"].get("hf_model_name")


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
        needs = [(repo, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))]
        if entry.source.startswith(HF_HUB_PREFIX):
            needs.insert(0, (repo, ("open_clip_config.json",)))
            text = _text_tower_repo(repo)
            needs += [(text, ("config.json",))] if text else []
        return needs

    @property
    def repo_id(self) -> str:
        """The hub repo the weights come from (for a pretrained tag, the one open_clip names)."""
        e = self.entry
        if e.source.startswith(TAG_PREFIX):
            from open_clip.pretrained import get_pretrained_cfg

            repo = get_pretrained_cfg(e.architecture or "", e.source[len(TAG_PREFIX):]).get("hf_hub")
            if not repo:
                raise VlmprobeError(
                    f"open_clip entry {e.name!r}: open_clip knows no hub weights for "
                    f"{e.architecture!r} with pretrained tag {e.source[len(TAG_PREFIX):]!r}; see "
                    "open_clip.list_pretrained() (names drift between open_clip releases).")
            return repo.rstrip("/")
        return e.source.removeprefix(HF_HUB_PREFIX)

    def _create(self, open_clip):
        e = self.entry
        if e.source.startswith(TAG_PREFIX):
            model, _, transform = open_clip.create_model_and_transforms(
                e.architecture, pretrained=e.source[len(TAG_PREFIX):], device=self.device)
            return model, transform
        return open_clip.create_model_from_pretrained(e.source, device=self.device,
                                                      return_transform=True)

    def _load_model(self):
        e = self.entry
        if not e.source.startswith((HF_HUB_PREFIX, TAG_PREFIX)):
            raise VlmprobeError(f"open_clip entry {e.name!r}: source {e.source!r} must read "
                                "hf-hub:<org>/<repo> or open_clip:<pretrained tag>.")
        if e.revision:
            # open_clip's hf-hub loader always reads the default branch: a pin would be ignored.
            raise VlmprobeError(f"open_clip entry {e.name!r}: open_clip cannot load a hub "
                                f"revision ({e.revision!r}); remove 'revision' from the entry.")
        open_clip = import_family_package(self, "open_clip")
        repo = self.repo_id  # an unknown pretrained tag is a registry error, said before loading
        try:
            model, self._transform = self._create(open_clip)
        except (OSError, RuntimeError) as err:
            repos = [repo, *filter(None, [_text_tower_repo(repo)])]
            raise VlmprobeError(f"open_clip could not load {e.source!r}: {err}\n"
                                f"{hub_fix_hint(e, *repos)}") from None
        return model

    def _build_transform(self):
        return self._transform

    def _forward(self, pixels):
        return self.model_.encode_image(pixels, normalize=False)

    def _weights_sha256(self):
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        return cached_weights_sha256(self.repo_id, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME), None,
                                     self.model_)
