"""The open_clip and transformers families, loaded offline from hub-shaped fixtures.

The registry entries are used as they are, except ``embed_dim``, which is set to the fixture's
tap width. References are built with each library's own API, without vlmprobe.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys

import numpy as np
import pytest
import torch
from hub_fixtures import (BIOMEDBERT_REPO, BIOMEDCLIP_REPO, MEDSIGLIP_REPO,
                          marker_positions, registry_facts_transform, sample_images,
                          use_hub_cache,
                          write_biomedclip, write_medsiglip)
from PIL import Image
from skimage.data import chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.provenance import sha256_file
from vlmprobe.registry import get_model_entry
from vlmprobe.validation import VlmprobeError

WRITERS = {"biomedclip": write_biomedclip, "medsiglip": write_medsiglip}
HUB_MODELS = list(WRITERS)
CHELSEA = Image.fromarray(chelsea())  # 451 x 300, RGB


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, cache)
        yield {name: write(cache) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def encoders(hub):
    loaded = {name: load_encoder(dataclasses.replace(get_model_entry(name), embed_dim=fx.tap_dim),
                                 device="cpu") for name, fx in hub.items()}
    return {**loaded, "efficientnet_lite0": load_encoder("efficientnet_lite0", device="cpu")}


@pytest.fixture(scope="module")
def references(hub):
    """name -> (tap, transform, wrong tap of the same width or None), from the libraries' APIs."""
    import open_clip
    from transformers import AutoImageProcessor, SiglipVisionModel

    clip, _, clip_transform = open_clip.create_model_and_transforms(f"hf-hub:{BIOMEDCLIP_REPO}")
    clip.eval()
    siglip = SiglipVisionModel.from_pretrained(hub["medsiglip"].snapshot).eval()
    processor = AutoImageProcessor.from_pretrained(MEDSIGLIP_REPO)
    return {
        "biomedclip": (clip.encode_image, clip_transform, None),
        "medsiglip": (lambda x: siglip(pixel_values=x).pooler_output,
                      lambda im: processor(images=im, return_tensors="pt").pixel_values[0],
                      lambda x: siglip(pixel_values=x).last_hidden_state[:, 0]),
    }


def _batch(transform) -> torch.Tensor:
    return torch.stack([transform(CHELSEA), transform(CHELSEA.transpose(Image.FLIP_LEFT_RIGHT))])


@pytest.mark.parametrize("name", HUB_MODELS)
def test_embeddings_have_tap_width_and_are_deterministic(name, hub, encoders):
    enc = encoders[name]
    x = _batch(enc.transform_)
    out = enc.encode_images(x)
    assert out.shape == (2, hub[name].tap_dim) and out.dtype == torch.float32
    assert torch.equal(out, enc.encode_images(x))


@pytest.mark.parametrize("name", HUB_MODELS)
def test_tap_and_transform_are_the_official_ones(name, encoders, references):
    tap, transform, wrong_tap = references[name]
    enc = encoders[name]
    for image in sample_images().values():
        assert torch.equal(enc.transform_(image), transform(image))
    x = _batch(transform)
    with torch.no_grad():
        out = enc.encode_images(x)
        torch.testing.assert_close(out, tap(x))
        if wrong_tap is not None:
            assert not torch.allclose(out, wrong_tap(x))


@pytest.mark.parametrize("name", HUB_MODELS)
def test_official_transform_matches_registry_facts(name, encoders):
    enc = encoders[name]
    expected = registry_facts_transform(enc.preprocess_cfg)(CHELSEA)
    torch.testing.assert_close(enc.transform_(CHELSEA), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", HUB_MODELS)
def test_weights_sha256_is_the_loaded_file(name, hub, encoders):
    weights = hub[name].weights
    # In the hub cache an LFS file's blob is named by its sha256.
    assert encoders[name].weights_sha256_ == sha256_file(weights) == weights.resolve().name


@pytest.mark.parametrize("name", HUB_MODELS)
def test_offline_without_cache_says_what_to_do(name, tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(VlmprobeError) as err:
        load_encoder(name, device="cpu")
    msg = str(err.value)
    repo = get_model_entry(name).source.removeprefix("hf-hub:")
    assert f"hf download {repo}" in msg and str(tmp_path / "hub") in msg
    assert ("hf auth login" in msg) == get_model_entry(name).gated


def test_biomedclip_error_names_missing_text_tower_repo(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    use_hub_cache(monkeypatch, cache)
    write_biomedclip(cache)
    shutil.rmtree(cache / ("models--" + BIOMEDBERT_REPO.replace("/", "--")))
    with pytest.raises(VlmprobeError, match=f"hf download {BIOMEDBERT_REPO}"):
        load_encoder("biomedclip", device="cpu")


@pytest.mark.parametrize("name, module, package", [("biomedclip", "open_clip", "open_clip_torch"),
                                                   ("medsiglip", "transformers", "transformers")])
def test_missing_package_names_pip_install(name, module, package, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(VlmprobeError, match=f"pip install {package}"):
        load_encoder(name, device="cpu")


@pytest.mark.parametrize("name", [*HUB_MODELS, "efficientnet_lite0"])
@pytest.mark.parametrize("width, height", [(300, 200), (200, 300)])
def test_marker_lands_where_geometry_says(name, width, height, encoders):
    """A bright 4x4 marker, pushed through the official transform, appears where
    vlmprobe.encoders.geometry puts it. Measured error is < 0.05 input px; 0.25 still catches a
    half-pixel (corner vs centre) convention slip."""
    found, expected = marker_positions(encoders[name], width, height)
    assert np.allclose(found, expected, atol=0.25), (found, expected)
