"""transformers models from the Hugging Face hub, plus the hub-cache helpers open_clip shares.

Both families load through their library's own ``from_pretrained``, which reads the HF cache
(``$HF_HUB_CACHE``) and downloads what is missing. Offline (``HF_HUB_OFFLINE=1``) a model loads
only if an online run or ``huggingface-cli download`` put its files in the cache, so every load
error says which repos to fetch (and, for gated ones, to accept the licence and log in).
"""
from __future__ import annotations

import importlib

from ..provenance import sha256_file
from ..registry import ModelEntry
from ..validation import VlmprobeError
from .base import Encoder, register_family, state_dict_sha256


def import_family_package(encoder: Encoder, module: str):
    """The family's library, or an error naming the pip package (``encoder.requires``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise VlmprobeError(f"Model {encoder.entry.name!r} (family {encoder.family!r}) needs "
                            f"{module} ({e}): pip install {' '.join(encoder.requires)}") from None


def hub_fix_hint(entry: ModelEntry, *repo_ids: str) -> str:
    """What to do when a hub model's files are not in the cache."""
    from huggingface_hub import constants

    downloads = "; ".join(f"`huggingface-cli download {r}`" for r in repo_ids)
    hint = (f"Model {entry.name!r} needs these hub repos in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}): run once with internet access (HF_HUB_OFFLINE unset), "
            f"or {downloads}.")
    if entry.gated:
        hint += (f" {repo_ids[0]} is gated: accept its licence at https://huggingface.co/"
                 f"{repo_ids[0]}, then `huggingface-cli login` (or set HF_TOKEN).")
    return hint


def cached_weights_sha256(repo_id: str, filenames: tuple[str, ...], revision: str | None,
                          model) -> str:
    """sha256 of the first of ``filenames`` (the library's own order) in the HF cache.

    A sharded checkpoint has no single file: then the loaded state dict is hashed instead.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        path = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(path, str):
            return sha256_file(path)
    return state_dict_sha256(model)


class ProcessorTransform:
    """An HF image processor as a per-image transform: PIL image -> ``pixel_values`` [3, H, W]."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self):
        return f"ProcessorTransform({self.processor!r})"


_TAPS = {
    "pooler_output": lambda model, x: model(pixel_values=x).pooler_output,
    "image_embeds": lambda model, x: model.get_image_features(pixel_values=x),
    "cls": lambda model, x: model(pixel_values=x).last_hidden_state[:, 0],
}


@register_family
class TransformersEncoder(Encoder):
    """``transformers.<architecture>.from_pretrained(source)`` with the repo's AutoImageProcessor."""

    family = "transformers"
    requires = ("transformers",)
    #: checkpoint names in the order transformers looks for them
    WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")

    def _from_hub(self, cls):
        e = self.entry
        try:
            return cls.from_pretrained(e.source, revision=e.revision,
                                       trust_remote_code=e.trust_remote_code)
        except OSError as err:
            raise VlmprobeError(f"transformers could not load {cls.__name__} from {e.source!r}: "
                                f"{err}\n{hub_fix_hint(e, e.source)}") from None

    def _load_model(self):
        e = self.entry
        if e.tap not in _TAPS:
            raise VlmprobeError(f"transformers entry {e.name!r}: tap {e.tap!r} unknown; "
                                f"valid: {', '.join(_TAPS)}.")
        transformers = import_family_package(self, "transformers")
        cls = getattr(transformers, e.architecture or "", None)
        if cls is None:
            raise VlmprobeError(f"transformers entry {e.name!r}: architecture {e.architecture!r} "
                                f"is not a class of transformers {transformers.__version__}; name "
                                "one, e.g. SiglipVisionModel, CLIPModel or AutoModel.")
        model = self._from_hub(cls)
        if e.tap == "image_embeds" and not hasattr(model, "get_image_features"):
            raise VlmprobeError(f"transformers entry {e.name!r}: {e.architecture} has no "
                                "get_image_features, so no 'image_embeds' tap; use a two-tower "
                                "class (e.g. CLIPModel, SiglipModel) or another tap.")
        return model

    def _build_transform(self):
        from transformers import AutoImageProcessor

        return ProcessorTransform(self._from_hub(AutoImageProcessor))

    def _forward(self, pixels):
        return _TAPS[self.entry.tap](self.model_, pixels)

    def _weights_sha256(self):
        return cached_weights_sha256(self.entry.source, self.WEIGHTS_FILES, self.entry.revision,
                                     self.model_)
