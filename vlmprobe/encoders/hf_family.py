"""transformers models from the Hugging Face hub (``source: <org>/<repo>``), with the repo's
own AutoImageProcessor as the official transform. An entry's local ``weights`` is a snapshot
directory (``config.json``, weights, ``preprocessor_config.json``), read by ``from_pretrained``
as the repo would be; there a checkpoint that leaves weights of the class unset (missing keys)
is refused instead of running with random ones (hub repos keep transformers' own behaviour)."""
from __future__ import annotations

from ..validation import VlmprobeError
from .base import Encoder, key_mismatch, register_family
from .hub import hub_fix_hint, import_family_package, weights_sha256


class ProcessorTransform:
    """An HF image processor as a per-image transform: PIL image -> ``pixel_values`` [3, H, W]."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self):
        return f"ProcessorTransform({self.processor!r})"


def _from_output(read):
    return lambda model, x: read(model(pixel_values=x))


#: taps read off one ``model(pixel_values=x)`` output: several of them share a forward pass
_OUTPUT_TAPS = {
    "pooler_output": lambda out: out.pooler_output,
    "cls": lambda out: out.last_hidden_state[:, 0],
    "mean_tokens": lambda out: out.last_hidden_state.mean(dim=1),
    "mean_patch": lambda out: out.last_hidden_state[:, 1:].mean(dim=1),
}
_TAPS = {
    **{name: _from_output(read) for name, read in _OUTPUT_TAPS.items()},
    "image_embeds": lambda model, x: model.get_image_features(pixel_values=x),
    # the vision tower of a multimodal model (e.g. MedGemma's SigLIP), mean of its tokens
    "vision_tower_mean": lambda model, x: model.vision_tower(pixel_values=x)
    .last_hidden_state.mean(dim=1),
}
#: what each tap needs the loaded model to have
_TAP_NEEDS = {"image_embeds": "get_image_features", "vision_tower_mean": "vision_tower"}


@register_family
class TransformersEncoder(Encoder):
    """``transformers.<architecture>.from_pretrained(source)`` with the repo's AutoImageProcessor."""

    family = "transformers"
    requires = ("transformers",)
    taps = _TAPS
    #: checkpoint names in the order transformers looks for them
    WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")

    @classmethod
    def needed_files(cls, entry):
        weights = (*cls.WEIGHTS_FILES, "model.safetensors.index.json")
        return [(entry.source, ("config.json",)), (entry.source, weights),
                (entry.processor_source or entry.source, ("preprocessor_config.json",))]

    def _from_hub(self, cls, source: str, revision: str | None, model: bool = True):
        """``cls.from_pretrained`` (a model, else a processor) from a hub repo or the entry's
        local snapshot directory; a local model that leaves weights unset is refused."""
        e = self.entry
        source = self.location(source)
        try:
            if not (model and self.entry.weights and source == str(self.local_)):
                return cls.from_pretrained(source, revision=revision,
                                           trust_remote_code=e.trust_remote_code)
            model, info = cls.from_pretrained(source, trust_remote_code=e.trust_remote_code,
                                              output_loading_info=True)
        except OSError as err:
            raise VlmprobeError(f"transformers could not load {cls.__name__} from {source!r}: "
                                f"{err}\n{hub_fix_hint(e, source)}") from None
        except ValueError as err:  # e.g. a model type this transformers does not know yet
            import transformers

            if "trust_remote_code" in str(err) and not e.trust_remote_code:
                raise VlmprobeError(
                    f"{source} ships its own Python code, but registry entry {e.name!r} does not "
                    "declare trust_remote_code: vlmprobe runs hub code only for entries that "
                    "declare it (and when you pass --trust-remote-code). Read the repo's code, "
                    "then set trust_remote_code: true in the entry.") from None
            raise VlmprobeError(f"transformers {transformers.__version__} could not build "
                                f"{cls.__name__} from {source!r}: {str(err)[:300]}. Check the "
                                "entry's description for the transformers version it needs.") from None
        if info["missing_keys"] or info["mismatched_keys"]:
            raise key_mismatch(source, list(info["missing_keys"]), list(info["unexpected_keys"]),
                               [f"{k} {a} vs {b}" for k, a, b in info["mismatched_keys"]])
        return model

    def _load_model(self):
        e = self.entry
        transformers = import_family_package(self, "transformers")
        if self.local_ is not None and not self.local_.is_dir():
            raise VlmprobeError(f"transformers entry {e.name!r}: weights {self.local_} is a file; "
                                "give the snapshot directory (config.json, the weights, "
                                "preprocessor_config.json), as save_pretrained writes it.")
        cls = getattr(transformers, e.architecture or "", None)
        if cls is None:
            raise VlmprobeError(f"transformers entry {e.name!r}: architecture {e.architecture!r} "
                                f"is not a class of transformers {transformers.__version__}; name "
                                "one, e.g. SiglipVisionModel, CLIPModel or AutoModel.")
        model = self._from_hub(cls, e.source, e.revision)
        needs = _TAP_NEEDS.get(e.tap)
        if needs and not hasattr(model, needs):
            raise VlmprobeError(f"transformers entry {e.name!r}: {type(model).__name__} has no "
                                f"{needs}, so no {e.tap!r} tap; use a class that has it (e.g. "
                                "CLIPModel, SiglipModel for image_embeds) or another tap.")
        return model

    def _build_transform(self):
        from transformers import AutoImageProcessor

        e = self.entry
        source, revision = (e.processor_source, None) if e.processor_source else (e.source,
                                                                                  e.revision)
        return ProcessorTransform(self._from_hub(AutoImageProcessor, source, revision, model=False))

    def _forward(self, pixels):
        return _TAPS[self.entry.tap](self.model_, pixels)

    def _forward_taps(self, pixels, taps):
        if set(taps) <= _OUTPUT_TAPS.keys():
            out = self.model_(pixel_values=pixels)
            return {t: _OUTPUT_TAPS[t](out) for t in taps}
        return super()._forward_taps(pixels, taps)

    def _weights_sha256(self):
        return weights_sha256(self.location(self.entry.source), self.WEIGHTS_FILES,
                              self.entry.revision, self.model_)
