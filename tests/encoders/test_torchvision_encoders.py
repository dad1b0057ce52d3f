"""The torchvision family on torch.hub-shaped fixtures: a state dict in torchvision's naming at
``$TORCH_HOME/hub/checkpoints/<file of weights.url>``, loaded offline through the production path.

resnet50 uses its real architecture (random weights); vit_l16 a tiny ``VisionTransformer`` with
the real weights enum (file name, transforms); vgg16's real architecture is 0.5 GB, so its test is
slow. References: the torchvision model with its head called directly, ``weights.transforms()``.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hub_fixtures import sample_images
from PIL import Image
from skimage.data import astronaut, chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.torchvision_family import checkpoint_path, weights_enum
from vlmprobe.provenance import sha256_file
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

CHELSEA = Image.fromarray(chelsea())
TINY_VIT = {"image_size": 224, "patch_size": 16, "num_layers": 2, "num_heads": 2,
            "hidden_dim": 24, "mlp_dim": 48, "num_classes": 1000}
#: name -> (entry overrides, pre-logits width, how the reference reaches the pre-logits)
CASES = {
    "resnet50": ({}, 2048, lambda m, x: torch.flatten(m.avgpool(_resnet_trunk(m, x)), 1)),
    "vit_l16": ({"architecture": "VisionTransformer", "model_kwargs": TINY_VIT}, 24,
                lambda m, x: m.encoder(_vit_tokens(m, x))[:, 0]),
    "vgg16": ({}, 4096, lambda m, x: m.classifier[:-1](torch.flatten(m.avgpool(m.features(x)), 1))),
}


def _resnet_trunk(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _vit_tokens(m, x):
    x = m._process_input(x)
    return torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)


def _write(name, torch_home):
    """Random weights of the entry's architecture, saved where torch.hub keeps that enum's file."""
    import torchvision.models as tvm

    overrides, width, _ = CASES[name]
    entry = dataclasses.replace(get_model_entry(name), **overrides, embed_dim=width)
    torch.manual_seed(0)
    model = (getattr(tvm, entry.architecture)(**entry.model_kwargs) if overrides
             else tvm.get_model(entry.architecture, weights=None)).eval()
    path = checkpoint_path(weights_enum(entry))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    assert str(path).startswith(str(torch_home))
    return entry, model, path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "torch"


@pytest.mark.parametrize("name", ["resnet50", "vit_l16",
                                  pytest.param("vgg16", marks=pytest.mark.slow)])
def test_pre_logits_tap_transform_and_checksum(name, torch_home):
    entry, reference, path = _write(name, torch_home)
    enc = load_encoder(entry, device="cpu")
    official = weights_enum(entry).transforms()
    for image in sample_images().values():
        assert torch.equal(enc.transform_(image), official(image))
    x = torch.stack([official(CHELSEA), official(Image.fromarray(astronaut()))])
    if name == "resnet50":  # a conv net takes any size: a 96 px corner keeps the test fast
        x = x[..., :96, :96]
    out = enc.encode_images(x)
    assert out.shape == (2, CASES[name][1]) and out.dtype == torch.float32
    assert torch.equal(out, enc.encode_images(x))
    with torch.no_grad():
        torch.testing.assert_close(out, CASES[name][2](reference, x))
    assert enc.weights_sha256_ == sha256_file(path)


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "vit_l16"])
def test_registry_facts_match_weights_transforms(name):
    """The entry's preprocess facts are what weights.transforms() does (sizes, interpolation,
    stats), so geometry and the cache key describe the real pipeline."""
    entry = get_model_entry(name)
    t, p = weights_enum(entry).transforms(), entry.preprocess
    assert (t.crop_size[0], t.resize_size[0]) == (p.image_size, p.resize_size)
    assert t.interpolation.value == p.interpolation
    assert tuple(t.mean) == p.mean and tuple(t.std) == p.std


def test_offline_without_file_says_where_to_put_it(torch_home):
    with pytest.raises(VlmprobeError, match="resnet50-11ad3fa6.pth is not there"):
        load_encoder("resnet50", device="cpu")


def test_checkpoint_of_another_architecture_is_refused(torch_home):
    import torchvision.models as tvm

    path = checkpoint_path(weights_enum(get_model_entry("resnet50")))
    path.parent.mkdir(parents=True)
    torch.save(tvm.resnet18().state_dict(), path)
    with pytest.raises(VlmprobeError, match=r"resnet50-11ad3fa6.pth does not fit the architecture: "
                                            r"\d+ missing keys \(first: layer1.0.conv3.weight, "
                                            r".*shape mismatches \(first: layer1.0.conv1.weight"):
        load_encoder("resnet50", device="cpu")


class _Payload:
    """Not a tensor: a checkpoint holding it could run code when unpickled without weights_only."""


def test_checkpoint_with_objects_is_refused_by_weights_only(torch_home):
    path = checkpoint_path(weights_enum(get_model_entry("resnet50")))
    path.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(VlmprobeError, match="weights_only loading refused it"):
        load_encoder("resnet50", device="cpu")
