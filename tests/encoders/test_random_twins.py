"""``<model>_random`` null baselines, derived for every registry entry: on hub-shaped fixtures
(offline) of the open_clip, transformers and timm families, the twin loads through the family's
own path, gives embeddings of the same width that differ from the pretrained model's, and is
deterministic per seed."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hub_fixtures import (TINY_OPEN_CLIP, UNI_REPO, use_hub_cache, write_clip_repo,
                          write_open_clip_repo, write_timm_hub)

from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.base import state_dict_sha256
from vlmprobe.registry import get_model_entry, random_twin
from vlmprobe.registry.models import CLIP_MEAN, CLIP_STD
from vlmprobe.validation import VlmprobeError

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
UNI_DATA = {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 1.0, **IMAGENET}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, cache)
        yield {"quiltnet": write_open_clip_repo(cache, "wisdomik/QuiltNet-B-32", TINY_OPEN_CLIP,
                                                {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}),
               "plip": write_clip_repo(cache, "vinid/plip", CLIP_MEAN, CLIP_STD),
               "uni": write_timm_hub(cache, UNI_REPO, {"init_values": 1e-5,
                                                       "dynamic_img_size": True}, UNI_DATA)}


def test_every_entry_has_a_random_twin_without_yaml():
    twin = get_model_entry("plip_random")
    assert twin.random_init and twin.baseline and twin.seed == 0 and twin.name == "plip_random"
    base = get_model_entry("plip")
    assert (twin.source, twin.architecture, twin.tap, twin.preprocess) == (
        base.source, base.architecture, base.tap, base.preprocess)
    # an entry the registry defines itself wins over the derived one
    assert get_model_entry("efficientnet_lite0_random").source == "random"
    with pytest.raises(VlmprobeError, match="nosuchmodel_random"):
        get_model_entry("nosuchmodel_random")


@pytest.mark.parametrize("name", ["quiltnet", "plip", "uni"])
def test_random_twin_loads_with_same_width_other_embeddings_and_is_seeded(name, hub):
    entry = dataclasses.replace(get_model_entry(name), embed_dim=hub[name].tap_dim)
    pretrained = load_encoder(entry, device="cpu")
    twins = [load_encoder(random_twin(entry, seed), device="cpu") for seed in (3, 3, 4)]
    x = torch.stack([pretrained.transform_(img) for img in _images()])
    ref = pretrained.encode_images(x)
    out = [t.encode_images(x) for t in twins]
    assert all(o.shape == ref.shape and torch.isfinite(o).all() for o in out)
    assert not torch.allclose(out[0], ref, atol=1e-3)            # not the pretrained weights
    assert torch.equal(out[0], out[1])                           # same seed, same model
    assert not torch.allclose(out[0], out[2], atol=1e-3)         # another seed, another model
    assert twins[0].weights_sha256_ == state_dict_sha256(twins[0].model_) != \
        pretrained.weights_sha256_
    # every parameter was replaced, none kept from the checkpoint (constant inits aside; seeds
    # other than the fixtures' own, which would redraw their very weights)
    kept = [k for k, v in pretrained.model_.state_dict().items()
            if v.is_floating_point() and v.numel() > 1 and "position_ids" not in k
            and torch.equal(v, twins[0].model_.state_dict()[k]) and v.unique().numel() > 1]
    assert kept == []
    assert twins[0].describe()["entry"]["random_init"] is True


def _images():
    from PIL import Image
    from skimage.data import astronaut, chelsea

    return [Image.fromarray(chelsea()), Image.fromarray(astronaut())]


def _twin_on(device: str):
    from vlmprobe.encoders import FAMILIES

    twin = get_model_entry("lite0_random_64_random")
    return FAMILIES[twin.family](twin, device=torch.device(device)).load()


def test_a_twin_is_randomised_before_it_moves_to_its_device(tiny_model):
    """The weights are drawn on the CPU and then moved, so a twin is the same on every device:
    loaded onto the meta device (no data at all) it has the CPU twin's checksum."""
    assert _twin_on("meta").weights_sha256_ == _twin_on("cpu").weights_sha256_


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_a_twin_has_the_same_weights_on_cuda_as_on_the_cpu(tiny_model, hub):
    cpu, gpu = _twin_on("cpu"), _twin_on("cuda")
    assert gpu.weights_sha256_ == cpu.weights_sha256_
    entry = random_twin(dataclasses.replace(get_model_entry("plip"), embed_dim=hub["plip"].tap_dim))
    assert (load_encoder(entry, device="cuda").weights_sha256_
            == load_encoder(entry, device="cpu").weights_sha256_)
