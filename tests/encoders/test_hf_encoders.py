"""More of the transformers family on hub-shaped fixtures, offline: two-tower CLIPModel repos
(``image_embeds``), DINOv2-style repos (``cls``), MedGemma's SigLIP tower inside a Gemma 3
checkpoint (``vision_tower_mean``), and a trust_remote_code repo (LLM2CLIP's layout) whose
preprocessor comes from ``processor_source``.

References use transformers directly (the model class's ``from_pretrained`` and the repo's
``AutoImageProcessor``), on 8-bit scikit-image photos and a DICOM slice decoded by vlmprobe's
fixed default intensity pipeline.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hub_fixtures import (CLIP_L336_REPO, registry_facts_transform, sample_images,
                          use_hub_cache,
                          write_clip_l336, write_clip_repo, write_dinov2_repo, write_medgemma,
                          write_remote_code_repo)
from PIL import Image
from skimage.data import astronaut

from vlmprobe.encoders import load_encoder
from vlmprobe.provenance import sha256_file
from vlmprobe.registry import get_model_entry
from vlmprobe.registry.models import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD


IMAGES = sample_images()


def _siglip_384():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": 384, "width": 384})
WRITERS = {
    "plip": lambda c: write_clip_repo(c, "vinid/plip", CLIP_MEAN, CLIP_STD),
    "pubmedclip": lambda c: write_clip_repo(c, "flaviagiammarino/pubmed-clip-vit-base-patch32",
                                            CLIP_MEAN, CLIP_STD),
    "monet": lambda c: write_clip_repo(c, "suinleelab/monet", IMAGENET_MEAN, IMAGENET_STD),
    "clip_l14_336": write_clip_l336,
    "medgemma": write_medgemma,
    "dinov2": lambda c: write_dinov2_repo(c, "facebook/dinov2-large", 256, 224),
    "rad_dino": lambda c: write_dinov2_repo(c, "microsoft/rad-dino", 518, 518),
    # its processor_source is the clip_l14_336 fixture, written above
    "llm2clip": lambda c: write_remote_code_repo(c, "microsoft/LLM2CLIP-Openai-L-14-336"),
    "conceptclip": lambda c: write_remote_code_repo(c, "JerrryNie/ConceptCLIP", _siglip_384()),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    with pytest.MonkeyPatch.context() as mp:
        use_hub_cache(mp, cache)
        mp.setenv("VLMPROBE_TRUST_REMOTE_CODE", "1")
        yield {name: write(cache) for name, write in WRITERS.items()}


def _pinned(name: str, fx, **changes):
    """The entry with ``changes``; a remote-code entry pinned to the fixture's commit, as hub
    code runs only at a known revision."""
    entry = get_model_entry(name)
    if entry.trust_remote_code:
        changes["revision"] = fx.snapshot.name
    return dataclasses.replace(entry, **changes)


def _reference(name):
    """(tap, wrong tap, processor) built with transformers only."""
    import transformers

    entry = get_model_entry(name)
    cls = getattr(transformers, entry.architecture)
    model = cls.from_pretrained(entry.source, trust_remote_code=entry.trust_remote_code).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(
        entry.processor_source or entry.source)
    hidden = lambda x: model(pixel_values=x).last_hidden_state  # noqa: E731
    tap, wrong = {
        "image_embeds": (lambda x: model.get_image_features(pixel_values=x), None),
        # same width; DINOv2's pooler_output is this very CLS token, so compare with the mean
        "cls": (lambda x: hidden(x)[:, 0], lambda x: hidden(x)[:, 1:].mean(1)),
        "vision_tower_mean": (
            lambda x: model.vision_tower(pixel_values=x).last_hidden_state.mean(1),
            lambda x: model.vision_tower(pixel_values=x).last_hidden_state[:, 0]),
    }[entry.tap]
    return tap, wrong, processor


@pytest.mark.parametrize("name", list(WRITERS))
def test_tap_transform_and_checksum_are_the_official_ones(name, hub):
    fx = hub[name]
    enc = load_encoder(_pinned(name, fx, embed_dim=fx.tap_dim), "cpu")
    tap, wrong, processor = _reference(name)
    for image in IMAGES.values():
        official = processor(images=image, return_tensors="pt").pixel_values[0]
        torch.testing.assert_close(enc.transform_(image), official, atol=1e-6, rtol=0)
    x = torch.stack([enc.transform_(IMAGES["chelsea"]), enc.transform_(Image.fromarray(astronaut()))])
    out = enc.encode_images(x)
    assert out.shape == (2, fx.tap_dim) and torch.equal(out, enc.encode_images(x))
    with torch.no_grad():
        torch.testing.assert_close(out, tap(x))
        if wrong is not None:
            assert not torch.allclose(out, wrong(x), atol=1e-3)
    assert enc.weights_sha256_ == sha256_file(fx.weights)
    facts = registry_facts_transform(enc.preprocess_cfg)(IMAGES["chelsea"])
    torch.testing.assert_close(enc.transform_(IMAGES["chelsea"]), facts, atol=1e-5, rtol=0)


def test_processor_source_is_used_for_preprocessing(hub):
    """LLM2CLIP's repo has no preprocessor: it comes from openai/clip-vit-large-patch14-336."""
    assert not (hub["llm2clip"].snapshot / "preprocessor_config.json").exists()
    enc = load_encoder(_pinned("llm2clip", hub["llm2clip"], embed_dim=18), "cpu")
    assert enc.transform_(IMAGES["chelsea"]).shape == (3, 336, 336)
    assert get_model_entry("llm2clip").processor_source == CLIP_L336_REPO


def test_unknown_model_type_is_an_error_naming_the_version(tmp_path, monkeypatch):
    """What a too-old transformers says for MedGemma (gemma3 needs >= 4.50)."""
    import json

    from hub_fixtures import write_snapshot

    from vlmprobe.validation import VlmprobeError

    use_hub_cache(monkeypatch, tmp_path / "hub")
    write_snapshot(tmp_path / "hub", "google/medgemma-4b-it",
                   {"config.json": json.dumps({"model_type": "gemma99"}).encode()})
    with pytest.raises(VlmprobeError, match=r"transformers 4\.\d+\.\d+ could not build"):
        load_encoder("medgemma", device="cpu")


REMOTE_REGISTRY = """schema_version: 1
models:
  tiny_remote:
    family: transformers
    architecture: AutoModel
    source: microsoft/LLM2CLIP-Openai-L-14-336
    processor_source: openai/clip-vit-large-patch14-336
    tap: image_embeds
    embed_dim: 18
    preprocess: {image_size: 336, resize: shortest, resize_size: 336, interpolation: bicubic, stats: clip}
    trust_remote_code: %s
    revision: %s
"""


@pytest.mark.parametrize("declared", [True, False])
def test_extract_runs_remote_code_only_with_the_entry_and_the_user_opt_in(declared, tmp_path,
                                                                          monkeypatch):
    """`vlmprobe extract` on LLM2CLIP's layout (tiny, remote modeling file): the entry's
    trust_remote_code alone is refused with a message naming --trust-remote-code; the flag
    (or $VLMPROBE_TRUST_REMOTE_CODE=1) allows it at a pinned commit, never at a branch; the flag
    never enables remote code for an entry that does not declare it."""
    from typer.testing import CliRunner

    from vlmprobe.cli import app
    from vlmprobe.data.phantoms import make_phantom
    from vlmprobe.validation import VlmprobeError

    use_hub_cache(monkeypatch, tmp_path / "hub")
    write_clip_l336(tmp_path / "hub")
    fx = write_remote_code_repo(tmp_path / "hub", "microsoft/LLM2CLIP-Openai-L-14-336")
    registry = tmp_path / "remote.yaml"
    pinned = REMOTE_REGISTRY % (str(declared).lower(), fx.snapshot.name)  # the fixture's commit
    registry.write_text(pinned)
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(registry))
    monkeypatch.setenv("VLMPROBE_CACHE", str(tmp_path / "vlmprobe_cache"))  # no lock there
    monkeypatch.delenv("VLMPROBE_TRUST_REMOTE_CODE", raising=False)
    root = make_phantom("breastus", tmp_path / "data", n=60, progress=False)
    cmd = ["extract", "--model", "tiny_remote", "--dataset", "breastus", "--root", str(root),
           "--out", str(tmp_path / "out"), "--workers", "0", "--device", "cpu"]
    runner = CliRunner()
    cache = tmp_path / "out" / "breastus" / "tiny_remote.h5"
    if declared:  # opted in, but at a revision that can move (a branch): refused all the same
        registry.write_text(REMOTE_REGISTRY % ("true", "main"))
        moving = runner.invoke(app, [*cmd, "--trust-remote-code"])
        assert "only at a known revision" in str(moving.exception) and not cache.exists()
        assert "vlmprobe models fetch tiny_remote" in str(moving.exception)
        registry.write_text(pinned)
    refused = runner.invoke(app, cmd)
    assert isinstance(refused.exception, VlmprobeError) and not cache.exists(), refused.output
    allowed = runner.invoke(app, [*cmd, "--trust-remote-code"])
    if not declared:  # transformers itself refuses the repo's code: nothing ran, no cache
        assert "does not declare trust_remote_code" in str(refused.exception)
        assert isinstance(allowed.exception, VlmprobeError) and not cache.exists()
        return
    assert "--trust-remote-code" in str(refused.exception)
    assert allowed.exit_code == 0 and "Cache written" in allowed.output, allowed.output
    monkeypatch.setenv("VLMPROBE_TRUST_REMOTE_CODE", "1")  # the environment alternative
    again = runner.invoke(app, cmd)
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    monkeypatch.delenv("VLMPROBE_TRUST_REMOTE_CODE")  # rise loads the encoder again: same rule
    probe = runner.invoke(app, ["probe", str(cache)])
    assert probe.exit_code == 0, probe.output
    rise = ["rise", str(cache), "--root", str(root), "--n-masks", "8", "--causal-steps", "0",
            "--images", "1", "--device", "cpu"]
    refused = runner.invoke(app, rise)
    assert "--trust-remote-code" in str(refused.exception)
    allowed = runner.invoke(app, [*rise, "--trust-remote-code"])
    assert allowed.exit_code == 0, allowed.output
