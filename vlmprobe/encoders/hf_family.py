"""transformers models from the Hugging Face hub (``source: <org>/<repo>``), with the repo's
own AutoImageProcessor as the official transform."""
from __future__ import annotations

from ..validation import VlmprobeError
from .base import Encoder, register_family
from .hub import cached_weights_sha256, hub_fix_hint, import_family_package


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
