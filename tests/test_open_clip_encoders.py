"""open_clip's two load paths besides BiomedCLIP's: a pretrained tag (``source:
open_clip:<tag>`` with ``architecture``, e.g. clip_b16) and a plain ``hf-hub:`` repo (QuiltNet).

The registry's tag entries are checked against the installed open_clip's own registries (the tag
exists, points at a hub repo, and its model config and preprocessing agree with the entry). The
load path runs offline on a tiny model registered under a test name and tag, whose weights sit
in the hub repo the tag names, as open_clip's real tags do.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hub_fixtures import (TINY_OPEN_CLIP, registry_facts_transform, sample_images, use_hub_cache,
                          write_open_clip_repo)
from PIL import Image
from skimage.data import astronaut, chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.provenance import sha256_file
from vlmprobe.registry import CLIP_MEAN, CLIP_STD, get_model_entry, load_registry
from vlmprobe.validation import VlmprobeError

CHELSEA = Image.fromarray(chelsea())
TAG_ENTRIES = sorted(n for n, e in load_registry().items() if e.source.startswith("open_clip:"))
TINY, TAG, TINY_REPO = "vlmprobe-tiny-ViT-B-32-quickgelu", "openai", "timm/vlmprobe_tiny.openai"


@pytest.mark.parametrize("name", TAG_ENTRIES)
def test_tag_entries_agree_with_open_clips_registries(name):
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    entry = get_model_entry(name)
    cfg = get_pretrained_cfg(entry.architecture, entry.source.removeprefix("open_clip:"))
    assert cfg.get("hf_hub"), (name, cfg)
    model_cfg = open_clip.get_model_config(entry.architecture)
    p = entry.preprocess
    assert model_cfg["embed_dim"] == entry.embed_dim
    assert model_cfg["vision_cfg"]["image_size"] == p.image_size
    assert tuple(cfg["mean"]) == p.mean and tuple(cfg["std"]) == p.std
    assert cfg.get("interpolation", "bicubic") == p.interpolation
    assert {"shortest": "shortest", "squash": "squash"}[cfg.get("resize_mode", "shortest")] == p.resize


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import open_clip
    import open_clip.pretrained as pretrained

    cache = tmp_path_factory.mktemp("hf") / "hub"
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, cache)
        # open_clip's registries are plain dicts; patched so the test name is undone afterwards
        mp.setitem(open_clip.factory._MODEL_CONFIGS, TINY, {**TINY_OPEN_CLIP, "quick_gelu": True})
        mp.setitem(pretrained._PRETRAINED, TINY, {TAG: pretrained._pcfg(
            hf_hub=f"{TINY_REPO}/", quick_gelu=True)})
        yield {"tag": write_open_clip_repo(cache, TINY_REPO, {**TINY_OPEN_CLIP, "quick_gelu": True},
                                           None, "open_clip_model.safetensors"),
               "quiltnet": write_open_clip_repo(cache, "wisdomik/QuiltNet-B-32", TINY_OPEN_CLIP,
                                                {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)})}


def _check(enc, model, transform, weights):
    for image in sample_images().values():
        assert torch.equal(enc.transform_(image), transform(image))
    x = torch.stack([transform(CHELSEA), transform(Image.fromarray(astronaut()))])
    out = enc.encode_images(x)
    assert out.shape == (2, 20) and torch.equal(out, enc.encode_images(x))
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval().encode_image(x))
    assert enc.weights_sha256_ == sha256_file(weights)
    torch.testing.assert_close(enc.transform_(CHELSEA),
                               registry_facts_transform(enc.preprocess_cfg)(CHELSEA), atol=1e-5,
                               rtol=0)


def test_pretrained_tag_path(hub):
    import open_clip

    entry = dataclasses.replace(get_model_entry("clip_b16"), architecture=TINY, embed_dim=20)
    enc = load_encoder(entry, device="cpu")
    model, _, transform = open_clip.create_model_and_transforms(TINY, pretrained=TAG)
    _check(enc, model, transform, hub["tag"].weights)


def test_hf_hub_repo_path(hub):
    import open_clip

    enc = load_encoder(dataclasses.replace(get_model_entry("quiltnet"), embed_dim=20), "cpu")
    model, transform = open_clip.create_model_from_pretrained("hf-hub:wisdomik/QuiltNet-B-32")
    _check(enc, model, transform, hub["quiltnet"].weights)


def test_unknown_tag_is_a_registry_error():
    entry = dataclasses.replace(get_model_entry("clip_b16"), source="open_clip:nope")
    with pytest.raises(VlmprobeError, match="knows no hub weights.*'nope'"):
        load_encoder(entry, device="cpu")


def test_tag_offline_without_cache_names_the_repo(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(VlmprobeError, match="huggingface-cli download timm/vit_base_patch16_clip_224.openai"):
        load_encoder("clip_b16", device="cpu")
