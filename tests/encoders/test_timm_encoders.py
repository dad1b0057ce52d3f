"""The timm family's hub path (UNI- and Virchow-shaped repos, offline): kwargs from the entry
(incl. layer classes by name), the hub pretrained_cfg as the official transform, the taps.

References: ``timm.create_model('hf-hub:...', pretrained=True, **kwargs)`` and
``create_transform(**resolve_data_config({}, model=model))``, without vlmprobe.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hub_fixtures import UNI_REPO, VIRCHOW_REPO, sample_images, use_hub_cache, write_timm_hub
from PIL import Image
from skimage.data import astronaut, chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.base import state_dict_sha256
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

CHELSEA = Image.fromarray(chelsea())
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
DATA = {"uni": {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 1.0, **IMAGENET},
        "virchow": {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 1.0,
                    **IMAGENET}}
REPOS = {"uni": UNI_REPO, "virchow": VIRCHOW_REPO}
UNI_KW = {"init_values": 1e-5, "dynamic_img_size": True}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import timm.layers

    cache = tmp_path_factory.mktemp("hf") / "hub"
    kwargs = {"uni": UNI_KW, "virchow": {"mlp_layer": timm.layers.SwiGLUPacked,
                                         "act_layer": torch.nn.SiLU}}
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, cache)
        yield {n: write_timm_hub(cache, REPOS[n], kwargs[n], DATA[n]) for n in REPOS}


def _entry(name, dim):
    return dataclasses.replace(get_model_entry(name), embed_dim=dim)


@pytest.mark.parametrize("name, width", [("uni", 192), ("virchow", 384)])
def test_hub_model_tap_transform_checksum(name, width, hub):
    import timm
    from timm.data import create_transform, resolve_data_config

    enc = load_encoder(_entry(name, width), device="cpu")
    kwargs = UNI_KW if name == "uni" else {"mlp_layer": timm.layers.SwiGLUPacked,
                                           "act_layer": torch.nn.SiLU}
    ref = timm.create_model(f"hf-hub:{REPOS[name]}", pretrained=True, **kwargs).eval()
    official = create_transform(**resolve_data_config({}, model=ref), is_training=False)
    for image in sample_images().values():
        assert torch.equal(enc.transform_(image), official(image))
    x = torch.stack([official(CHELSEA), official(Image.fromarray(astronaut()))])
    out = enc.encode_images(x)
    assert out.shape == (2, width) and torch.equal(out, enc.encode_images(x))
    with torch.no_grad():
        tokens = ref.forward_features(x)
        expected = (tokens[:, 0] if name == "uni"
                    else torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1))
        torch.testing.assert_close(out, expected)
    assert enc.weights_sha256_ == state_dict_sha256(ref)


def test_registry_facts_that_disagree_with_pretrained_cfg_are_refused(hub):
    entry = _entry("uni", 192)
    wrong = dataclasses.replace(entry, preprocess=dataclasses.replace(entry.preprocess,
                                                                      interpolation="bicubic"))
    with pytest.raises(VlmprobeError, match="interpolation.*fix the entry"):
        load_encoder(wrong, device="cpu")


def test_unknown_layer_name_is_an_error(hub):
    entry = _entry("virchow", 384)
    bad = dataclasses.replace(entry, model_kwargs={"mlp_layer": "SwiGLUPackd"})
    with pytest.raises(VlmprobeError, match="SwiGLUPackd"):
        load_encoder(bad, device="cpu")


def test_gated_hub_model_offline_says_login(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(VlmprobeError, match=f"hf download {UNI_REPO}.*login"):
        load_encoder("uni", device="cpu")


def test_uni2h_structure_with_registers_pools_the_cls_token(tmp_path, monkeypatch):
    """UNI2-h's entry kwargs (SwiGLUPacked, SiLU, 8 register tokens, no_embed_class, ...) with
    only the widths shrunk (embed_dim 1536 -> 48, depth 24 -> 2, heads 24 -> 4): 'pooled' is the
    CLS token, not a register token."""
    import timm

    use_hub_cache(monkeypatch, tmp_path / "hub")
    entry = get_model_entry("uni2h")
    tiny = {**entry.model_kwargs, "embed_dim": 48, "depth": 2, "num_heads": 4}
    layers = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
    write_timm_hub(tmp_path / "hub", "MahmoodLab/UNI2-h", {**tiny, **layers}, DATA["uni"],
                   arch="vit_giant_patch14_224")
    model = timm.create_model("hf-hub:MahmoodLab/UNI2-h", pretrained=True,
                              **{**tiny, **layers}).eval()
    enc = load_encoder(dataclasses.replace(entry, model_kwargs=tiny, embed_dim=48), device="cpu")
    x = enc.transform_(CHELSEA)[None]
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert model.num_prefix_tokens == 9  # CLS + 8 registers
    out = enc.encode_images(x)
    torch.testing.assert_close(out, tokens[:, 0])
    assert not torch.allclose(out, tokens[:, 1], atol=1e-3)
