"""Every family loads from a plain directory (or file) named by an entry's ``weights``, with no
HF cache and no torch.hub cache, offline: what an air-gapped cluster has.

Each hub-shaped fixture is written into a scratch HF cache, loaded from there once (the hub
path), then copied as plain files into a folder; the HF cache the load sees is empty. The
local load must give the hub load's embeddings and weights checksum (so cache keys agree), and a
checkpoint that does not fit its architecture is refused naming its first missing and
unexpected keys.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hub_fixtures import (TINY_OPEN_CLIP, UNI_REPO, use_hub_cache, write_clip_repo,
                          write_llava_hf, write_open_clip_repo, write_timm_hub)
from PIL import Image
from skimage.data import astronaut, chelsea

import vlmprobe
from vlmprobe.encoders import load_encoder
from vlmprobe.provenance import sha256_file
from vlmprobe.registry import get_model_entry, load_registry
from vlmprobe.validation import VlmprobeError

CHELSEA, ASTRONAUT = Image.fromarray(chelsea()), Image.fromarray(astronaut())
CLIP_STATS = {"mean": [0.48145466, 0.4578275, 0.40821073],
              "std": [0.26862954, 0.26130258, 0.27577711]}
UNI_DATA = {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 1.0,
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
UNI_KW = {"init_values": 1e-5, "dynamic_img_size": True}
STANDINS = Path(__file__).parent / "upstream_standins"
#: entry -> (its tap width on the fixture, the fixture writer)
HUB = {"uni": (192, lambda c: write_timm_hub(c, UNI_REPO, UNI_KW, UNI_DATA)),
       "quiltnet": (20, lambda c: write_open_clip_repo(c, "wisdomik/QuiltNet-B-32",
                                                       TINY_OPEN_CLIP, CLIP_STATS)),
       "plip": (20, lambda c: write_clip_repo(c, "vinid/plip", CLIP_STATS["mean"],
                                              CLIP_STATS["std"])),
       "llava": (40, write_llava_hf)}


def _entry(name, **fields):
    return dataclasses.replace(get_model_entry(name), embed_dim=HUB[name][0], **fields)


def _embed(enc):
    x = torch.stack([enc.transform_(CHELSEA), enc.transform_(ASTRONAUT)])
    return enc.encode_images(x)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """name -> (plain folder of the repo's files, the hub load's embeddings and checksum)."""
    root = tmp_path_factory.mktemp("local")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, root / "hub")
        for name, (_, write) in HUB.items():
            fixture = write(root / "hub")
            folder = root / "plain" / name
            shutil.copytree(fixture.snapshot, folder, symlinks=False)  # files, not cache links
            enc = load_encoder(_entry(name), "cpu")
            out[name] = folder, _embed(enc), enc.weights_sha256_
    return out


@pytest.fixture
def offline_empty(tmp_path, monkeypatch):
    """Nothing cached anywhere: an empty HF cache, an empty torch.hub folder, offline."""
    use_hub_cache(monkeypatch, tmp_path / "empty-hf")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    return tmp_path


@pytest.mark.parametrize("name", list(HUB))
def test_family_loads_a_plain_directory_as_its_hub_repo(name, plain, offline_empty):
    folder, hub_out, hub_sha = plain[name]
    with pytest.raises(VlmprobeError):  # the hub path has nothing to read here
        load_encoder(_entry(name), "cpu")
    enc = load_encoder(_entry(name, weights=str(folder)), "cpu")
    torch.testing.assert_close(_embed(enc), hub_out, rtol=0, atol=0)
    assert enc.weights_sha256_ == hub_sha
    assert not any((offline_empty / "empty-hf").rglob("*.json"))  # nothing was fetched


def test_timm_weights_file_onto_the_entrys_architecture(plain, offline_empty, tmp_path):
    folder, hub_out, _ = plain["uni"]
    entry = _entry("uni", architecture="vit_tiny_patch16_224",
                   weights=str(folder / "model.safetensors"))
    enc = load_encoder(entry, "cpu")
    torch.testing.assert_close(_embed(enc), hub_out, rtol=0, atol=0)
    assert enc.weights_sha256_ == sha256_file(folder / "model.safetensors")
    small = dataclasses.replace(entry, architecture="vit_small_patch16_224")
    with pytest.raises(VlmprobeError, match=r"model.safetensors does not fit the architecture: .*"
                                            r"shape mismatches \(first: cls_token"):
        load_encoder(small, "cpu")
    resnet = dataclasses.replace(entry, architecture="resnet18", model_kwargs={})
    with pytest.raises(VlmprobeError, match=r"\d+ missing keys \(first: conv1.weight, bn1.weight, "
                                            r"bn1.bias\); \d+ unexpected keys \(first: "
                                            r"blocks.0.attn.proj.bias"):
        load_encoder(resnet, "cpu")
    for k, label in enumerate(("a", "b")):  # through extract: refused before anything is written
        (tmp_path / "images" / label).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40 * k, 80, 120)).save(tmp_path / "images" / label / "1.png")
    out = tmp_path / "caches"
    with pytest.raises(VlmprobeError, match=r"missing keys \(first: conv1.weight"):
        vlmprobe.extract(resnet, f"imagefolder:{tmp_path / 'images'}", out=out)
    assert not out.exists()


def test_open_clip_weights_file_into_a_builtin_config(plain, offline_empty, monkeypatch):
    import open_clip

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vlmprobe-tiny-local", TINY_OPEN_CLIP)
    folder, hub_out, _ = plain["quiltnet"]
    weights = folder / "open_clip_pytorch_model.bin"
    enc = load_encoder(_entry("quiltnet", architecture="vlmprobe-tiny-local",
                              weights=str(weights)), "cpu")
    torch.testing.assert_close(_embed(enc), hub_out, rtol=0, atol=0)
    assert enc.weights_sha256_ == sha256_file(weights)
    wider = {**TINY_OPEN_CLIP, "embed_dim": 24}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vlmprobe-tiny-wider", wider)
    with pytest.raises(VlmprobeError, match=r"open_clip_pytorch_model.bin does not fit the "
                                            r"architecture: .*shape mismatches \(first: "):
        load_encoder(_entry("quiltnet", architecture="vlmprobe-tiny-wider", weights=str(weights)),
                     "cpu")


def test_transformers_directory_that_leaves_weights_unset_is_refused(plain, offline_empty):
    from safetensors.torch import load_file, save_file

    folder, _, _ = plain["plip"]
    broken = offline_empty / "broken"
    shutil.copytree(folder, broken)
    tensors = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "visual_projection" not in k},
              broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VlmprobeError, match=r"broken does not fit the architecture: 1 missing "
                                            r"keys \(first: visual_projection.weight\)"):
        load_encoder(_entry("plip", weights=str(broken)), "cpu")
    with pytest.raises(VlmprobeError, match="is a file; give the snapshot directory"):
        load_encoder(_entry("plip", weights=str(folder / "model.safetensors")), "cpu")


def test_torchvision_state_dict_file(offline_empty):
    import torchvision.models as tvm

    torch.manual_seed(0)
    path = offline_empty / "resnet18-mine.pth"
    reference = tvm.resnet18().eval()
    torch.save(reference.state_dict(), path)
    entry = dataclasses.replace(get_model_entry("resnet50"), architecture="resnet18",
                                source="torchvision:ResNet18_Weights.IMAGENET1K_V1",
                                embed_dim=512, weights=str(path))
    enc = load_encoder(entry, "cpu")
    x = enc.transform_(CHELSEA)[None]
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_images(x), reference(x), rtol=0, atol=0)
    assert enc.weights_sha256_ == sha256_file(path)
    assert not (offline_empty / "empty-torch").exists()
    with pytest.raises(VlmprobeError, match=r"resnet18-mine.pth does not fit the architecture: "
                                            r"\d+ missing keys \(first: layer1.0.conv3.weight"):
        load_encoder(dataclasses.replace(entry, architecture="resnet50", embed_dim=2048), "cpu")


@pytest.fixture
def standins(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    yield
    for name in [n for n, m in sys.modules.items()  # leave no stand-in importable afterwards
                 if str(getattr(m, "__file__", "") or "").startswith(str(STANDINS))]:
        del sys.modules[name]


def test_upstream_apis_take_a_local_checkpoint(standins, offline_empty):
    """CONCH (file or folder), FLAIR (folder) and UniMed-CLIP (file) from plain files, through
    the stand-ins' upstream signatures (see upstream_standins/README.md)."""
    from conch.open_clip_custom import TinyCoCa, create_model_from_pretrained
    from flair import FLAIRModel
    from unimed_open_clip_standin import TinyClip

    torch.manual_seed(1)
    (offline_empty / "conch").mkdir()
    torch.save(TinyCoCa().state_dict(), offline_empty / "conch" / "pytorch_model.bin")
    conch = dataclasses.replace(get_model_entry("conch"), embed_dim=24,
                                weights=str(offline_empty / "conch"))
    enc = load_encoder(conch, "cpu")
    model, preprocess = create_model_from_pretrained("conch_ViT-B-16",
                                                     str(offline_empty / "conch/pytorch_model.bin"))
    x = preprocess(CHELSEA)[None]
    torch.testing.assert_close(enc.encode_images(x),
                               model.encode_image(x, proj_contrast=False, normalize=False))
    assert enc.weights_sha256_ == sha256_file(offline_empty / "conch" / "pytorch_model.bin")
    FLAIRModel().save_pretrained(offline_empty / "flair")
    flair = load_encoder(dataclasses.replace(get_model_entry("flair"), embed_dim=16,
                                             weights=str(offline_empty / "flair")), "cpu")
    reference = FLAIRModel.from_pretrained(offline_empty / "flair")
    y = flair.transform_(CHELSEA)[None]
    with torch.no_grad():
        torch.testing.assert_close(flair.encode_images(y), reference.vision_model(y))
    torch.save(TinyClip().state_dict(), offline_empty / "unimed.pt")
    unimed = dataclasses.replace(get_model_entry("unimedclip"), embed_dim=16,
                                 weights=str(offline_empty / "unimed.pt"),
                                 model_kwargs={**get_model_entry("unimedclip").model_kwargs,
                                               "module": "unimed_open_clip_standin"})
    assert load_encoder(unimed, "cpu").weights_sha256_ == sha256_file(offline_empty / "unimed.pt")


def test_user_registry_entry_with_weights_and_what_is_not_identity(tmp_path, plain, offline_empty):
    folder = plain["plip"][0]
    user = tmp_path / "mine.yaml"
    user.write_text(f"""models:
  my_plip:
    family: transformers
    architecture: CLIPModel
    source: vinid/plip
    weights: {folder}
    tap: image_embeds
    embed_dim: 20
    preprocess: {{image_size: 224, resize: shortest, resize_size: 224, stats: clip}}
""")
    entry = load_registry([user])["my_plip"]
    assert entry.weights == str(folder) and "weights" not in entry.to_dict()
    enc = load_encoder(entry, "cpu")
    torch.testing.assert_close(_embed(enc), plain["plip"][1], rtol=0, atol=0)
    entry2 = dataclasses.replace(entry, weights=str(tmp_path / "gone"))
    with pytest.raises(VlmprobeError, match="weights .*gone does not exist"):
        load_encoder(entry2, "cpu")
    from vlmprobe.encoders.check import check_entry

    assert check_entry(entry).status == "ready"  # nothing cached, nothing needed from the hub
    assert check_entry(entry2).status == "blocked" and "gone does not exist" in " ".join(
        check_entry(entry2).reasons)
