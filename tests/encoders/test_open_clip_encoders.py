"""open_clip entries besides BiomedCLIP: the reference CLIPs (clip_b16, clip_l14, clip_g14, eva02,
siglip) and QuiltNet, each loaded from its hub repo (``hf-hub:``) the way a user loads it.

The reference CLIPs name the built-in open_clip config whose pretrained tag points at the same
repo. Offline, each repo is a hub-shaped fixture at its real repo id: ``open_clip_config.json``
(a tiny model of the same kind: OpenAI ViT with QuickGELU, bigG's head width and MLP ratio,
EVA02 and SigLIP through timm with their pooling and projection) and both weights files. The
tiny config is also registered in open_clip as a built-in with a copy of the real tag's
pretrained config, so ``create_model_and_transforms(<tiny>, pretrained=<real tag>)`` is
open_clip's tag path on the same files: the entry's load must equal it, transform and output.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hub_fixtures import (TINY_OPEN_CLIP, registry_facts_transform, sample_images, use_hub_cache,
                          write_open_clip_repo, write_snapshot)
from PIL import Image
from skimage.data import astronaut, chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.provenance import sha256_file
from vlmprobe.registry import get_model_entry, load_registry
from vlmprobe.registry.models import CLIP_MEAN, CLIP_STD
from vlmprobe.validation import VlmprobeError

CHELSEA = Image.fromarray(chelsea())
REFERENCE = ["clip_b16", "clip_l14", "clip_g14", "eva02", "siglip"]
#: the open_clip pretrained tag each reference entry's repo belongs to
TAGS = {"clip_b16": "openai", "clip_l14": "openai", "clip_g14": "laion2b_s39b_b160k",
        "eva02": "merged2b_s6b_b61k", "siglip": "webli"}
TEXT = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
#: entry -> (tiny model config of the same kind, tap width, preprocess_cfg as its hub repo has it)
OPENAI_PRE = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
              "resize_mode": "shortest"}
TINY = {
    "clip_b16": ({"embed_dim": 20, "quick_gelu": True, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16}},
        20, OPENAI_PRE),
    "clip_l14": ({"embed_dim": 22, "quick_gelu": True, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 224, "layers": 2, "width": 48, "head_width": 16, "patch_size": 14}},
        22, OPENAI_PRE),
    "clip_g14": ({"embed_dim": 24, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 224, "layers": 2, "width": 40, "head_width": 20, "mlp_ratio": 4.9231,
        "patch_size": 14}}, 24, {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}),
    # timm trunk (width 192) whose own head projects to embed_dim, as EVA02-L-14-336
    "eva02": ({"embed_dim": 26, "custom_text": True, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 336, "timm_model_name": "eva02_tiny_patch14_336",
        "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None}},
        26, {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}),
    # attention-pooled (MAP) timm trunk, no projection: the tap is the trunk's width, as SigLIP
    "siglip": ({"embed_dim": 192, "init_logit_bias": -10, "custom_text": True, "text_cfg": TEXT,
                "vision_cfg": {"image_size": 384, "timm_model_name": "vit_tiny_patch16_384",
                               "timm_model_pretrained": False, "timm_pool": "map",
                               "timm_proj": "none"}},
               192, {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                     "resize_mode": "squash"}),
}


def _repo(name):
    return get_model_entry(name).source.removeprefix("hf-hub:")


def _tiny_name(name):
    return f"vlmprobe-tiny-{name}"


@pytest.mark.parametrize("name", REFERENCE)
def test_entry_is_the_pretrained_tags_repo_and_preprocessing(name):
    """The repo is the one open_clip's tag names with its default file names (trailing '/'), and
    the entry's dim, size and preprocessing are the built-in config's and the tag's."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    entry = get_model_entry(name)
    cfg = get_pretrained_cfg(entry.architecture, TAGS[name])
    assert cfg["hf_hub"] == _repo(name) + "/"
    model_cfg = open_clip.get_model_config(entry.architecture)
    p = entry.preprocess
    assert model_cfg["embed_dim"] == entry.embed_dim
    assert model_cfg["vision_cfg"]["image_size"] == p.image_size
    assert model_cfg.get("quick_gelu", False) == cfg.get("quick_gelu", False)
    assert tuple(cfg["mean"]) == p.mean and tuple(cfg["std"]) == p.std
    assert cfg.get("interpolation", "bicubic") == p.interpolation
    assert cfg.get("resize_mode", "shortest") == p.resize


def test_every_open_clip_entry_is_tested_here_or_with_biomedclip():
    entries = {n for n, e in load_registry().items() if e.family == "open_clip"}
    assert entries == {*REFERENCE, "quiltnet", "biomedclip"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import open_clip
    import open_clip.pretrained as pretrained

    cache = tmp_path_factory.mktemp("hf") / "hub"
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, cache)
        fixtures = {}
        for name, (cfg, _, pre) in TINY.items():
            entry = get_model_entry(name)
            # the tiny model as a built-in, with the real tag's pretrained config (same hub repo)
            mp.setitem(open_clip.factory._MODEL_CONFIGS, _tiny_name(name), cfg)
            mp.setitem(pretrained._PRETRAINED, _tiny_name(name), {
                TAGS[name]: pretrained.get_pretrained_cfg(entry.architecture, TAGS[name])})
            fixtures[name] = write_open_clip_repo(cache, _repo(name), cfg, pre, both_files=True)
        fixtures["quiltnet"] = write_open_clip_repo(
            cache, "wisdomik/QuiltNet-B-32", TINY_OPEN_CLIP,
            {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)})
        yield fixtures


def _entry(name):
    tiny = {"architecture": _tiny_name(name)} if name in TINY else {}
    return dataclasses.replace(get_model_entry(name), embed_dim=TINY.get(name, (0, 20))[1],
                               **tiny)


@pytest.mark.parametrize("name", REFERENCE)
def test_hub_load_equals_open_clips_tag_path(name, hub):
    import open_clip

    enc = load_encoder(_entry(name), device="cpu")
    tag_model, _, tag_transform = open_clip.create_model_and_transforms(
        _tiny_name(name), pretrained=TAGS[name])
    for image in sample_images().values():  # a photo and a DICOM slice, 8-bit
        assert torch.equal(enc.transform_(image), tag_transform(image))
    x = torch.stack([tag_transform(CHELSEA), tag_transform(Image.fromarray(astronaut()))])
    out = enc.encode_images(x)
    assert out.shape == (2, TINY[name][1]) and torch.equal(out, enc.encode_images(x))
    with torch.no_grad():
        torch.testing.assert_close(out, tag_model.eval().encode_image(x))
    # open_clip loads (and vlmprobe hashes) the safetensors file when both are present
    assert enc.weights_sha256_ == sha256_file(hub[name].weights)
    assert hub[name].weights.name == "open_clip_model.safetensors"
    torch.testing.assert_close(enc.transform_(CHELSEA),
                               registry_facts_transform(enc.preprocess_cfg)(CHELSEA), atol=1e-5,
                               rtol=0)


def test_siglip_tap_is_the_attention_pool_not_the_cls_token(hub):
    """SigLIP has no projection (tap width = trunk width): values tell the pooling apart."""
    enc = load_encoder(_entry("siglip"), device="cpu")
    x = enc.transform_(CHELSEA)[None]
    trunk = enc.model_.visual.trunk
    with torch.no_grad():
        tokens = trunk.forward_features(x)
        torch.testing.assert_close(enc.encode_images(x), trunk.forward_head(tokens))
        assert not torch.allclose(enc.encode_images(x), tokens[:, 0], atol=1e-3)


def test_quiltnet_hf_hub_repo(hub):
    import open_clip

    enc = load_encoder(_entry("quiltnet"), "cpu")
    model, transform = open_clip.create_model_from_pretrained("hf-hub:wisdomik/QuiltNet-B-32")
    for image in sample_images().values():
        assert torch.equal(enc.transform_(image), transform(image))
    x = transform(CHELSEA)[None]
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_images(x), model.encode_image(x))
    assert enc.weights_sha256_ == sha256_file(hub["quiltnet"].weights)


@pytest.fixture
def own_cache(tmp_path, monkeypatch, hub):
    """A fresh cache for one repo, with the tiny built-ins of ``hub`` still registered."""
    use_hub_cache(monkeypatch, tmp_path / "hub")
    return tmp_path / "hub"


def test_quick_gelu_is_forced_when_the_hub_config_omits_it(own_cache):
    """open_clip's tag loads OpenAI weights with QuickGELU; a repo config without the flag must
    not silently load them with GELU."""
    import open_clip

    cfg, dim, pre = TINY["clip_l14"]
    write_open_clip_repo(own_cache, _repo("clip_l14"), {k: v for k, v in cfg.items()
                                                        if k != "quick_gelu"}, pre)
    enc = load_encoder(_entry("clip_l14"), device="cpu")
    tag_model, _, _ = open_clip.create_model_and_transforms(_tiny_name("clip_l14"), "openai")
    gelu = open_clip.create_model_from_pretrained(f"hf-hub:{_repo('clip_l14')}",
                                                  return_transform=False)
    x = enc.transform_(CHELSEA)[None]
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_images(x), tag_model.eval().encode_image(x))
        assert not torch.allclose(enc.encode_images(x), gelu.eval().encode_image(x), atol=1e-4)


def test_a_repo_whose_tower_differs_from_the_builtin_is_refused(own_cache):
    cfg, _, pre = TINY["clip_g14"]
    other = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "layers": 3}}
    write_open_clip_repo(own_cache, _repo("clip_g14"), other, pre)
    with pytest.raises(VlmprobeError, match=r"another image tower.*'layers': 3"):
        load_encoder(_entry("clip_g14"), device="cpu")


def test_preprocessing_unlike_the_entry_is_refused(own_cache):
    """A repo whose preprocess_cfg crops where the entry squashes (so geometry would be wrong)."""
    cfg, _, pre = TINY["siglip"]
    write_open_clip_repo(own_cache, _repo("siglip"), cfg, {**pre, "resize_mode": "shortest"})
    with pytest.raises(VlmprobeError, match=r"preprocessing differs.*'resize': \('shortest', "
                                            r"'squash'\)"):
        load_encoder(_entry("siglip"), device="cpu")


def test_repo_without_open_clip_config_names_the_download(own_cache):
    cfg, _, _ = TINY["eva02"]
    write_snapshot(own_cache, _repo("eva02"), {"merges.txt": b"#"})  # repo cached, config not
    with pytest.raises(VlmprobeError, match="hf download timm/eva02_large_patch14"):
        load_encoder(_entry("eva02"), device="cpu")


def test_offline_without_cache_names_the_repo(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(VlmprobeError,
                       match="hf download timm/vit_base_patch16_clip_224.openai"):
        load_encoder("clip_b16", device="cpu")


@pytest.mark.parametrize("change, expect", [
    ({"architecture": "ViT-Nope-14"}, "has no model config 'ViT-Nope-14'"),
    ({"source": "open_clip:openai"}, "must read hf-hub:<org>/<repo>")])
def test_bad_entries_are_registry_errors(change, expect):
    with pytest.raises(VlmprobeError, match=expect):
        load_encoder(dataclasses.replace(get_model_entry("clip_b16"), **change), device="cpu")


def test_hub_fixture_config_is_the_real_layout(hub):
    """The fixture repo holds what the real one does: config + both weights files."""
    names = {p.name for p in hub["clip_l14"].snapshot.iterdir()}
    assert names == {"open_clip_config.json", "open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin"}
    cfg = json.loads((hub["clip_l14"].snapshot / "open_clip_config.json").read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"} and cfg["model_cfg"]["quick_gelu"]
