"""The upstream family (CONCH, FLAIR, CXR-CLIP, UniMed-CLIP) against STAND-IN modules.

The stand-ins in tests/upstream_standins mimic only the upstream call signatures (commits in
their README), with tiny random models: these tests prove the adapter's calls, file layout and
errors, not that upstream code loads. Weights sit in the real places (HF cache repos, a local
CXR-CLIP checkpoint) and are read offline through the production path.
"""
from __future__ import annotations

import dataclasses
import io
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hub_fixtures import marker_positions, use_hub_cache, write_snapshot
from PIL import Image
from skimage.data import astronaut, chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.provenance import sha256_file
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

STANDINS = Path(__file__).parent / "upstream_standins"
CHELSEA = Image.fromarray(chelsea())
PROJ, TRUNK = 16, 24
#: entry name -> the width its upstream embedding call gives on the stand-in
WIDTH = {"conch": TRUNK, "flair": PROJ, "cxrclip": PROJ, "unimedclip": PROJ,
         "unimedclip_l14": PROJ}


def _bytes(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Stand-ins importable, weights in a temporary HF cache and weights dir, offline."""
    root = tmp_path_factory.mktemp("up")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(STANDINS))
        use_hub_cache(mp, root / "hub")
        mp.setenv("VLMPROBE_WEIGHTS", str(root / "weights"))
        from conch.open_clip_custom import TinyCoCa
        from cxrclip.model import CXRClip
        from flair import FLAIRModel
        from transformers import BertTokenizerFast
        from unimed_open_clip_standin import TinyClip

        torch.manual_seed(0)
        write_snapshot(root / "hub", "MahmoodLab/conch", {
            "meta.yaml": b"model_name: conch_ViT-B-16\n",
            "pytorch_model.bin": _bytes(TinyCoCa().state_dict())})
        with tempfile.TemporaryDirectory() as tmp:
            FLAIRModel().save_pretrained(tmp)
            write_snapshot(root / "hub", "jusiro2/FLAIR",
                           {p.name: p.read_bytes() for p in Path(tmp).iterdir()})
            (Path(tmp) / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                            "[MASK]", "chest", "x", "ray"]))
            tokenizer = BertTokenizerFast(vocab_file=str(Path(tmp) / "vocab.txt"))
            tokenizer.save_pretrained(tmp + "/t")
            write_snapshot(root / "hub", "emilyalsentzer/Bio_ClinicalBERT",
                           {p.name: p.read_bytes() for p in Path(tmp, "t").iterdir()})
        for repo, file in [("UzairK/unimed-clip-vit-b16", "unimed-clip-vit-b16.pt"),
                           ("UzairK/unimed_clip_vit_l14_base_text_encoder",
                            "unimed_clip_vit_l14_base_text_encoder.pt")]:
            write_snapshot(root / "hub", repo, {file: _bytes(TinyClip().state_dict())})
        (root / "weights").mkdir()
        torch.save({"config": {"model": {"name": "clip_custom", "image_encoder": {"name": "resnet"}},
                               "loss": {"cxr_clip": {}}},
                    "model": CXRClip({}, {}, tokenizer).state_dict()},
                   root / "weights" / "r50_mcc.tar")
        yield root
    for name in [n for n, m in sys.modules.items()  # leave no stand-in importable afterwards
                 if str(getattr(m, "__file__", "") or "").startswith(str(STANDINS))]:
        del sys.modules[name]


def _entry(name):
    entry = dataclasses.replace(get_model_entry(name), embed_dim=WIDTH[name])
    if name.startswith("unimedclip"):  # the fork's import name is open_clip; the stand-in's not
        entry = dataclasses.replace(entry, model_kwargs={**entry.model_kwargs,
                                                         "module": "unimed_open_clip_standin"})
    return entry


@pytest.mark.parametrize("name", list(WIDTH))
def test_upstream_call_gives_the_tap_width_deterministically(name, env):
    enc = load_encoder(_entry(name), device="cpu")
    x = torch.stack([enc.transform_(CHELSEA), enc.transform_(Image.fromarray(astronaut()))])
    out = enc.encode_images(x)
    assert out.shape == (2, WIDTH[name]) and out.dtype == torch.float32
    assert torch.equal(out, enc.encode_images(x))


def test_conch_uses_its_own_transform_and_hub_weights(env):
    from conch.open_clip_custom import create_model_from_pretrained

    enc = load_encoder(_entry("conch"), device="cpu")
    model, preprocess = create_model_from_pretrained("conch_ViT-B-16", "hf_hub:MahmoodLab/conch")
    assert torch.equal(enc.transform_(CHELSEA), preprocess(CHELSEA))
    x = preprocess(CHELSEA)[None]
    torch.testing.assert_close(enc.encode_images(x),
                               model.encode_image(x, proj_contrast=False, normalize=False))
    from huggingface_hub import try_to_load_from_cache

    weights = try_to_load_from_cache("MahmoodLab/conch", "pytorch_model.bin")
    assert enc.weights_sha256_ == sha256_file(weights) == Path(weights).resolve().name


def test_flair_transform_is_its_preprocess_image_and_geometry_matches(env):
    import numpy as np

    enc = load_encoder(_entry("flair"), device="cpu")
    expected = enc.model_.preprocess_image(np.asarray(CHELSEA))[0]
    assert torch.equal(enc.transform_(CHELSEA), expected)
    g = enc.geometry(*CHELSEA.size)  # 451 x 300 -> 512 x 340 at the top-left of 512 x 512
    assert g.input_size == (512, 512) and g.shift == (0.0, 0.0)
    assert np.allclose(g.to_input(450.5, 299.5), (511.5, 339.5), atol=1e-6)
    assert g.unseen_fraction == 0.0
    for width, height in [(300, 200), (200, 300)]:
        found, expected = marker_positions(enc, width, height)
        assert np.allclose(found, expected, atol=0.25), (found, expected)


def test_cxrclip_missing_checkpoint_says_where(env, monkeypatch, tmp_path):
    monkeypatch.setenv("VLMPROBE_WEIGHTS", str(tmp_path))
    with pytest.raises(VlmprobeError, match=f"{tmp_path}/r50_mcc.tar not found.*cxr-clip"):
        load_encoder(_entry("cxrclip"), device="cpu")


def test_pypi_open_clip_is_not_taken_for_the_unimed_fork(env):
    with pytest.raises(VlmprobeError, match="PyPI's open_clip, not UniMed-CLIP's fork"):
        load_encoder(dataclasses.replace(get_model_entry("unimedclip"), embed_dim=PROJ), "cpu")


@pytest.mark.parametrize("name, command", [
    ("conch", "pip install git+https://github.com/mahmoodlab/CONCH.git"),
    ("flair", "pip install git+https://github.com/jusiro/FLAIR.git")])
def test_missing_upstream_package_names_the_install_command(name, command, monkeypatch):
    monkeypatch.setitem(sys.modules, "conch.open_clip_custom" if name == "conch" else "flair", None)
    with pytest.raises(VlmprobeError, match=command.replace("+", r"\+")):
        load_encoder(name, device="cpu")


def test_models_check_says_not_verified_against_upstream(env):
    from vlmprobe.encoders.check import check_entry

    for name in WIDTH:
        assert "load path not verified against upstream code" in " ".join(
            check_entry(_entry(name)).reasons)


def test_check_tells_pypi_open_clip_from_the_unimed_fork(env):
    from vlmprobe.encoders.check import check_entry

    assert "not UniMed-CLIP's fork" in " ".join(check_entry(get_model_entry("unimedclip")).reasons)
    assert "fork" not in " ".join(check_entry(_entry("unimedclip")).reasons)


@pytest.mark.parametrize("name, size", [("unimedclip", 224), ("unimedclip_l14", 336)])
def test_unimedclip_fetches_the_entrys_weights_file(name, size, env):
    """The .pt named by weights_file, from the hub repo UniMed-CLIP's app.py downloads."""
    from huggingface_hub import try_to_load_from_cache

    entry = _entry(name)
    enc = load_encoder(entry, device="cpu")
    path = try_to_load_from_cache(entry.source.removeprefix("hf_hub:"), entry.weights_file)
    assert enc.weights_sha256_ == sha256_file(path)
    assert enc.transform_(CHELSEA).shape == (3, size, size)
