"""torchvision classification models (``source: torchvision:<Weights enum member>``).

The weights enum is the source of truth: its ``url`` names the state dict that
``torch.hub.load_state_dict_from_url`` keeps in ``$TORCH_HOME/hub/checkpoints/`` (read there
offline, downloaded with its hash checked otherwise, always ``weights_only``) and its
``transforms()`` is the official preprocessing. ``architecture`` is a torchvision builder
(``resnet50``) or model class (``VisionTransformer``, with ``model_kwargs``). An entry's local
``weights`` file replaces the download (same ``weights_only`` read, keys checked).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from ..provenance import sha256_file
from ..validation import VlmprobeError
from .base import Encoder, check_state_dict, read_state_dict, register_family

PREFIX = "torchvision:"
#: the classification head each architecture ends with; ``pre_logits`` replaces it by Identity
_HEADS = ("fc", "heads", "classifier")


def weights_enum(entry):
    from torchvision.models import get_weight

    try:
        return get_weight(entry.source.removeprefix(PREFIX))
    except (ValueError, KeyError, AttributeError) as err:
        raise VlmprobeError(f"torchvision entry {entry.name!r}: source {entry.source!r} is not a "
                            f"torchvision weights enum member ({err}); e.g. "
                            "torchvision:ResNet50_Weights.IMAGENET1K_V2.") from None


def checkpoint_path(weights) -> Path:
    """Where torch.hub keeps the weights file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _strip_head(model: nn.Module) -> nn.Module:
    for name in _HEADS:
        head = getattr(model, name, None)
        if isinstance(head, nn.Sequential):  # VGG: keep fc6/fc7, drop the last Linear
            head[-1] = nn.Identity()
            return model
        if head is not None:
            setattr(model, name, nn.Identity())
            return model
    raise VlmprobeError(f"{type(model).__name__} has none of the heads {_HEADS}: no pre_logits tap.")


@register_family
class TorchvisionEncoder(Encoder):
    family = "torchvision"
    requires = ("torchvision",)
    taps = ("pre_logits",)  # the input of the classification head

    @classmethod
    def needed_files(cls, entry):
        path = checkpoint_path(weights_enum(entry))
        return [(str(path.parent), (path.name,))]

    def _load_model(self):
        import torchvision.models as tvm

        e = self.entry
        self._weights = weights_enum(e)
        if e.architecture in tvm.list_models():
            model = tvm.get_model(e.architecture, weights=None, **e.model_kwargs)
        elif isinstance(getattr(tvm, e.architecture or "", None), type):
            model = getattr(tvm, e.architecture)(**e.model_kwargs)
        else:
            raise VlmprobeError(f"torchvision entry {e.name!r}: architecture {e.architecture!r} is "
                                "neither a torchvision builder (torchvision.models.list_models()) "
                                "nor a model class.")
        if self.local_ is not None:
            if self.local_.is_dir():
                raise VlmprobeError(f"torchvision entry {e.name!r}: weights {self.local_} is a "
                                    "folder; name the state dict file (.pth).")
            self._path, state = self.local_, read_state_dict(self.local_)
        else:
            state = self._download()
        check_state_dict(model, state, self._path)
        model.load_state_dict(state)
        return _strip_head(model)

    def _download(self) -> dict:
        """The weights enum's state dict: from torch.hub's cache, else downloaded (hash checked)."""
        e = self.entry
        self._path = checkpoint_path(self._weights)
        if not self._path.is_file() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise VlmprobeError(f"Model {e.name!r}: {self._path} is not there and HF_HUB_OFFLINE=1. "
                                f"Run once online, or download {self._weights.url} into "
                                f"{self._path.parent}.")
        try:
            state = torch.hub.load_state_dict_from_url(self._weights.url, map_location="cpu",
                                                       check_hash=True, weights_only=True)
        except pickle.UnpicklingError as err:
            raise VlmprobeError(f"Model {e.name!r}: {self._path} holds more than tensors, so "
                                f"weights_only loading refused it ({str(err)[:200]}); delete it "
                                "and download the official file again.") from None
        except (OSError, RuntimeError) as err:
            raise VlmprobeError(f"Model {e.name!r}: cannot get {self._weights.url} into "
                                f"{self._path.parent}: {err}") from None
        return state

    def _build_transform(self):
        return self._weights.transforms()

    def _forward(self, pixels):
        return self.model_(pixels)

    def _weights_sha256(self):
        return sha256_file(self._path)
