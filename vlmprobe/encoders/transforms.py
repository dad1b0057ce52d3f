"""What turns a decoded sample into a model's input: the official transform, or one of the
variants of it that extraction and RISE share.

- ``--fast-decode`` (:func:`fast_transform`): the first resize by torch's uint8 antialiased kernel
  instead of PIL's, then the official remaining steps.
- ``--intensity float`` (:func:`float_transform`): the official steps on a float32 tensor in
  [0, 1], so 12/16-bit and windowed DICOM levels reach the model without rounding to 256 levels;
  a transform with no faithful float form is refused, never quantised.
- ``--fast-decode`` on a GPU (:func:`tensor_transform`): the float steps on the GPU, on the
  8-bit images nvJPEG decoded there (:mod:`vlmprobe.extraction.gpu_decode`).
"""
from __future__ import annotations

import copy
import functools

import numpy as np
import torch

from ..validation import VlmprobeError
from .base import Encoder


class FastResize:
    """``--fast-decode``: the official transform with its first step, a torchvision ``Resize``,
    done by torch's uint8 antialiased kernel (AVX2) instead of PIL's — same output size rule,
    same filter, ≈ 1 grey level apart — then the official remaining steps.

    Why not JPEG DCT-scaled (draft) decoding: any pre-reduction before the official antialiased
    resize (DCT 1/2, ``Image.reduce(2)``, even a bicubic 2x) is a second filter in cascade, and
    efficientnet_lite0 embeddings moved by cosine ~1e-3 under it (min 0.9948-0.9988 over
    1024x768 and 2048x1536 JPEGs, 1.5x and 3x headroom to the resize alike); this single-stage
    path keeps cosine >= 0.99992 on all 2,000 benchmark JPEGs (benchmarks/RESULTS.md).
    """

    def __init__(self, resize, rest):
        self.resize, self.rest = resize, rest

    def __call__(self, image):
        from torchvision.transforms.v2 import functional as F

        return self.rest(F.to_pil_image(_resize(self.resize, F.pil_to_tensor(image))))


def _resize(step, pixels: torch.Tensor) -> torch.Tensor:
    """A torchvision ``Resize`` step done on a tensor (uint8 or float) with antialiasing, as PIL
    always resizes: same output size rule, same filter."""
    from torchvision.transforms.v2 import functional as F

    return F.resize(pixels, step.size, interpolation=step.interpolation,
                    max_size=step.max_size, antialias=True)


def _torch_resizable(step) -> bool:
    """A torchvision bilinear/bicubic ``Resize``: torch's antialiased kernel matches PIL's to
    about a grey level (nearest neighbours pick other pixels in torch than in PIL)."""
    from torchvision import transforms as T

    return isinstance(step, T.Resize) and step.interpolation in (
        T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC)


def fast_transform(transform):
    """:class:`FastResize` over ``transform``, or None when it does not begin with a torchvision
    bilinear/bicubic ``Resize`` (e.g. a transformers image processor): then there is nothing
    faithful to speed up and extraction keeps the exact path."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not steps or not _torch_resizable(steps[0]):
        return None
    return FastResize(steps[0], T.Compose(steps[1:]))


class FloatTransform:
    """``--intensity float``: the official transform's steps on a float32 [3, H, W] tensor in
    [0, 1], so 12/16-bit and windowed DICOM levels reach the model without rounding to 256."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.on_tensor(
            torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1))

    def on_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """The steps on a float [3, H, W] tensor in [0, 1], or a batch [B, 3, H, W] of one
        size, on any device (the GPU path of ``--fast-decode`` runs them on the images nvJPEG
        decoded there)."""
        for step in self.steps:
            pixels = step(pixels)
        return pixels.contiguous()


def _float_steps(transform) -> list | None:
    """The steps of an official transform that is a torchvision ``Compose`` (open_clip, timm,
    upstream) or torchvision's ``ImageClassification`` preset (resize, crop, normalise), else
    None."""
    from torchvision import transforms as T
    from torchvision.transforms._presets import ImageClassification

    if isinstance(transform, T.Compose):
        return list(transform.transforms)
    if isinstance(transform, ImageClassification):
        return [T.Resize(transform.resize_size, transform.interpolation),
                T.CenterCrop(transform.crop_size), T.Normalize(transform.mean, transform.std)]
    return None


#: steps that only turn a PIL image into an RGB image or a tensor: a float RGB tensor skips them
_PIL_ONLY = ("ToTensor", "PILToTensor", "MaybeToTensor", "MaybeConvertMode", "_convert_to_rgb")


def _clamped_resize(step, pixels: torch.Tensor) -> torch.Tensor:
    """:func:`_resize` kept in [0, 1], as PIL's 8-bit resize clips bicubic overshoot."""
    return _resize(step, pixels).clamp_(0, 1)


def _float_step(step, model: str):
    """``step`` as an operation on a float tensor in [0, 1], or None to skip it."""
    from torchvision import transforms as T

    name = getattr(step, "__name__", type(step).__name__)
    if name in _PIL_ONLY:
        return None
    if _torch_resizable(step):
        return functools.partial(_clamped_resize, step)  # a partial pickles (spawned workers)
    if isinstance(step, (T.CenterCrop, T.Normalize, T.ConvertImageDtype)):
        return step  # tensor-native, and the same operation on a float image
    if isinstance(step, T.Pad) or name == "CenterCropOrPad":  # PIL fills in 8-bit levels
        if isinstance(step.fill, (int, float)):
            scaled = copy.copy(step)
            scaled.fill = step.fill / 255
            return scaled
    raise VlmprobeError(f"--intensity float: {model}'s official transform has a step {step!r} "
                        f"with no float version here; use --intensity 8bit for {model}.")


def float_transform(transform, model: str) -> FloatTransform:
    """The float version of ``model``'s official transform (:class:`FloatTransform`), or a
    VlmprobeError: a transform with no faithful float form is refused, never quantised."""
    steps = _float_steps(transform)
    if steps is None:
        raise VlmprobeError(
            f"--intensity float: {model}'s official transform is a {type(transform).__name__}, "
            "not a torchvision Compose (resize, crop, normalise), so vlmprobe cannot give it "
            "float pixels without rounding them to 8-bit first. Use --intensity 8bit for "
            f"{model}.")
    mapped = [_float_step(step, model) for step in steps]
    return FloatTransform([m for m in mapped if m is not None])


def tensor_transform(transform, model: str) -> FloatTransform | None:
    """The official transform as steps on float tensors on any device (the GPU path of
    ``--fast-decode``), or None where it has no such form: its first step is not a
    torchvision bilinear/bicubic ``Resize`` (as for :func:`fast_transform`), or a step has no
    faithful float version (:func:`float_transform`)."""
    if fast_transform(transform) is None:
        return None
    try:
        return float_transform(transform, model)
    except VlmprobeError:
        return None


def input_transform(encoder: Encoder, intensity: str = "8bit"):
    """What turns a decoded sample into the model's input: the official transform for 8-bit
    RGB, :func:`float_transform` for ``intensity="float"`` (extract and RISE alike)."""
    if intensity == "float":
        return float_transform(encoder.transform_, encoder.entry.name)
    return encoder.transform_
