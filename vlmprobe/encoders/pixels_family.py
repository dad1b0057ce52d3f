"""The ``pixels`` null baseline: the image itself, shrunk, is the embedding.

What a linear probe reaches on raw pixels is the floor an encoder must clear to have learned
anything beyond colour and layout. The probe reduces these pixels by PCA to the compared model's
d inside each training fold (``vlmprobe probe``), so both rows get the same C = t·d/N.
"""
from __future__ import annotations

import torch
from torchvision import transforms

from .base import Encoder, register_family, state_dict_sha256

_INTERPOLATION = {"bilinear": transforms.InterpolationMode.BILINEAR,
                  "bicubic": transforms.InterpolationMode.BICUBIC,
                  "nearest": transforms.InterpolationMode.NEAREST}


@register_family
class PixelsEncoder(Encoder):
    """Resize (``squash``: whole image, no crop) to ``image_size``², normalize, flatten:
    d = 3 · image_size²."""

    family = "pixels"
    taps = ("flat",)

    def _load_model(self):
        return torch.nn.Flatten()  # no weights: nothing learned

    def _build_transform(self):
        p = self.entry.preprocess
        return transforms.Compose([
            transforms.Resize((p.image_size, p.image_size), _INTERPOLATION[p.interpolation],
                              antialias=True),
            transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])

    def _forward(self, pixels):
        return self.model_(pixels)

    def _weights_sha256(self):
        return state_dict_sha256(self.model_)  # the empty state dict's: no weights
