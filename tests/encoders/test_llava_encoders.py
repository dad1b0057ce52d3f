"""The llava_tower family on hub-shaped LLaVA-Med / llava-hf / OpenAI CLIP fixtures, offline.

References are built without vlmprobe: LLaVA's own feature selection (``hidden_states[-2][:, 1:]``)
on a stock CLIPVisionModel holding the checkpoint's tensors, LLaVA's ``mlp2x_gelu`` projector, and
LLaVA's ``expand2square`` + the tower repo's CLIPImageProcessor (and transformers'
LlavaImageProcessor with ``do_pad=True``) for preprocessing.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hub_fixtures import (CLIP_L336_REPO, LLAVA_MED_REPO, LLM, TOWER, marker_positions,
                          sample_images,
                          use_hub_cache, write_clip_l336, write_llava_hf, write_llava_med)
from PIL import Image
from safetensors import safe_open
from skimage.data import astronaut, chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

CHELSEA = Image.fromarray(chelsea())  # 451 x 300: padding matters
WIDTHS = {"tower": TOWER, "projector": LLM}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, cache)
        yield {"clip": write_clip_l336(cache), "llavamed": write_llava_med(cache),
               "llava": write_llava_hf(cache)}


def _load(name):
    entry = get_model_entry(name)
    return load_encoder(dataclasses.replace(entry, embed_dim=WIDTHS[entry.tap]), device="cpu")


@pytest.fixture(scope="module")
def encoders(hub):
    names = ("llavamed", "llavamed_projector", "llava", "llava_projector", "clip_l14_336_tower")
    return {n: _load(n) for n in names}


def _checkpoint_tensors(fixture, prefix):
    index = json.loads((fixture.snapshot / "model.safetensors.index.json").read_text())
    out = {}
    for shard in set(index["weight_map"].values()):
        with safe_open(fixture.snapshot / shard, framework="pt") as f:
            out.update({k[len(prefix):]: f.get_tensor(k).float() for k in f.keys()
                        if k.startswith(prefix)})
    return out


def _reference(fixture, tower_prefix, projector_prefix=None):
    """LLaVA's CLIPVisionTower.feature_select + build_vision_projector('mlp2x_gelu')."""
    from transformers import CLIPConfig, CLIPVisionModel

    config = CLIPConfig.from_pretrained(CLIP_L336_REPO).vision_config
    tower = CLIPVisionModel(config).eval()
    tower.vision_model.load_state_dict(_checkpoint_tensors(fixture, tower_prefix))
    projector = None
    if projector_prefix:
        p = _checkpoint_tensors(fixture, projector_prefix)
        w1, w2 = sorted({k.split(".")[0] for k in p})
        projector = torch.nn.Sequential(torch.nn.Linear(TOWER, LLM), torch.nn.GELU(),
                                        torch.nn.Linear(LLM, LLM))
        projector.load_state_dict({"0.weight": p[f"{w1}.weight"], "0.bias": p[f"{w1}.bias"],
                                   "2.weight": p[f"{w2}.weight"], "2.bias": p[f"{w2}.bias"]})

    def tap(x):
        feats = tower(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        return (projector(feats) if projector else feats).mean(1)
    return tap


def _expand2square(image, background):
    """LLaVA's llava/mm_utils.py expand2square (pad the short side, image centred)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def _llava_transform(image):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(CLIP_L336_REPO)
    padded = _expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor(images=padded, return_tensors="pt").pixel_values[0]


@pytest.mark.parametrize("name, fx, tower_prefix, projector_prefix", [
    ("llavamed", "llavamed", "model.vision_tower.vision_tower.vision_model.", None),
    ("llavamed_projector", "llavamed", "model.vision_tower.vision_tower.vision_model.",
     "model.mm_projector."),
    ("llava", "llava", "vision_tower.vision_model.", None),
    ("llava_projector", "llava", "vision_tower.vision_model.", "multi_modal_projector."),
])
def test_taps_are_llavas_features(name, fx, tower_prefix, projector_prefix, hub, encoders):
    enc = encoders[name]
    x = torch.stack([enc.transform_(CHELSEA), enc.transform_(Image.fromarray(astronaut()))])
    out = enc.encode_images(x)
    assert out.shape == (2, WIDTHS[enc.entry.tap]) and out.dtype == torch.float32
    assert torch.equal(out, enc.encode_images(x))
    with torch.no_grad():
        torch.testing.assert_close(out, _reference(hub[fx], tower_prefix, projector_prefix)(x))


@pytest.mark.parametrize("name", ["llavamed", "llava", "clip_l14_336_tower"])
def test_transform_is_llavas_pad_then_clip_processor(name, encoders):
    from transformers import LlavaImageProcessor

    enc = encoders[name]
    hf = LlavaImageProcessor.from_pretrained(CLIP_L336_REPO, do_pad=True)
    for image in sample_images().values():
        ours = enc.transform_(image)
        assert ours.shape == (3, 336, 336)
        torch.testing.assert_close(ours, _llava_transform(image), atol=1e-6, rtol=0)
        torch.testing.assert_close(ours, hf(images=image, return_tensors="pt").pixel_values[0],
                                   atol=1e-6, rtol=0)


def test_llava_mistral_config_is_never_parsed_by_transformers(hub):
    """The paper's blocker: stock transformers refuses model_type llava_mistral."""
    from transformers import AutoConfig

    with pytest.raises(ValueError, match="llava_mistral"):
        AutoConfig.from_pretrained(LLAVA_MED_REPO)
    assert _load("llavamed").weights_sha256_


def test_only_shards_holding_the_tower_are_read(hub, encoders):
    index = json.loads((hub["llava"].snapshot / "model.safetensors.index.json").read_text())
    needed = {f for k, f in index["weight_map"].items() if k.startswith("vision_tower.")}
    assert len(set(index["weight_map"].values())) == 3 and len(needed) < 3
    assert {p.rsplit("/", 1)[1] for p in encoders["llava"]._files} == needed


def test_wrong_prefix_and_wrong_dim_are_errors(hub):
    entry = get_model_entry("llavamed")
    bad = dataclasses.replace(entry, model_kwargs={**entry.model_kwargs, "tower_prefix": "nope."})
    with pytest.raises(VlmprobeError, match="no tensors under 'nope.'"):
        load_encoder(bad, device="cpu")
    off = dataclasses.replace(entry, preprocess=dataclasses.replace(entry.preprocess,
                                                                    pad_color=(0, 0, 0)))
    with pytest.raises(VlmprobeError, match=r"pad_color \[0, 0, 0\] differs.*\[122, 116, 104\]"):
        load_encoder(off, device="cpu")
    enc = load_encoder(entry, device="cpu")  # embed_dim 1024 as in the real model
    with pytest.raises(VlmprobeError, match="embed_dim=1024"):
        enc.encode_images(torch.zeros(1, 3, 336, 336))


def test_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(VlmprobeError, match=f"hf download {LLAVA_MED_REPO}"):
        load_encoder("llavamed", device="cpu")


@pytest.mark.parametrize("width, height", [(300, 200), (200, 300)])
def test_marker_lands_where_geometry_says_after_padding(width, height, encoders):
    """pad_square geometry (centred pad, then resize + crop) matches LLaVA's transform."""
    found, expected = marker_positions(encoders["llavamed"], width, height)
    assert np.allclose(found, expected, atol=0.25), (found, expected)


@pytest.fixture
def s2_hub(tmp_path, monkeypatch):
    """A LLaVA-Med++-shaped checkpoint (mm_hidden_size 3 x tower) and the s2wrapper STAND-IN."""
    import sys
    from pathlib import Path

    cache = tmp_path / "hub"
    use_hub_cache(monkeypatch, cache)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "upstream_standins"))
    write_clip_l336(cache)
    yield write_llava_med(cache, repo_id="yunfeixie/vqa_rad_release", s2=True)
    sys.modules.pop("s2wrapper", None)


def test_s2_tower_concatenates_scales_and_its_first_scale_is_the_plain_tower(s2_hub):
    import torch.nn.functional as F
    from transformers import LlavaImageProcessor

    entry = get_model_entry("llavamedpp")
    enc = load_encoder(dataclasses.replace(entry, embed_dim=3 * TOWER), device="cpu")
    x = enc.transform_(CHELSEA)[None]
    official = LlavaImageProcessor.from_pretrained(
        CLIP_L336_REPO, do_pad=True, size={"shortest_edge": 1008},
        crop_size={"height": 1008, "width": 1008})
    torch.testing.assert_close(x[0], official(images=CHELSEA, return_tensors="pt").pixel_values[0],
                               atol=1e-6, rtol=0)
    out = enc.encode_images(x)
    assert out.shape == (1, 3 * TOWER) and torch.equal(out, enc.encode_images(x))
    plain = _reference(s2_hub, "model.vision_tower.vision_tower.vision_model.")
    with torch.no_grad():  # scale 336 is one tile: its channels are the tower on the resized image
        torch.testing.assert_close(out[:, :TOWER], plain(F.interpolate(x, size=336, mode="bicubic")))
    projected = load_encoder(dataclasses.replace(entry, tap="projector", embed_dim=LLM), "cpu")
    assert projected.encode_images(x).shape == (1, LLM)


def test_s2_without_s2wrapper_names_the_install(tmp_path, monkeypatch):
    import sys

    from vlmprobe.encoders.check import check_entry

    use_hub_cache(monkeypatch, tmp_path / "hub")
    write_clip_l336(tmp_path / "hub")
    write_llava_med(tmp_path / "hub", repo_id="yunfeixie/vqa_rad_release", s2=True)
    monkeypatch.setitem(sys.modules, "s2wrapper", None)
    with pytest.raises(VlmprobeError, match="scaling_on_scales"):
        load_encoder(dataclasses.replace(get_model_entry("llavamedpp"), embed_dim=120), "cpu")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert "s2wrapper" in " ".join(check_entry(get_model_entry("llavamedpp")).reasons)
