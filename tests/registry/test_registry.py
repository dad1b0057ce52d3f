import pytest
import torch
from PIL import Image

from vlmprobe.registry import get_model_entry, list_models, load_registry
from vlmprobe.validation import VlmprobeError


def test_unknown_model_lists_valid_keys():
    with pytest.raises(VlmprobeError, match="Valid models: .*efficientnet_lite0"):
        get_model_entry("efficientnet_lite")


def test_baseline_flagged_and_entries_complete():
    reg = load_registry()
    assert reg["efficientnet_lite0_random"].baseline
    assert not reg["efficientnet_lite0"].baseline
    assert "efficientnet_lite0" in list_models("efficient*")


def test_malformed_registry_names_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "extra.yaml"
    bad.write_text("models:\n  x: [unclosed\n")
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(bad))
    with pytest.raises(VlmprobeError, match="extra.yaml is not valid YAML"):
        load_registry()
    bad.write_text("models:\n  efficientnet_lite0: {family: timm, source: random, embed_dim: 1, tap: pooled, preprocess: {image_size: 8}}\n")
    with pytest.raises(VlmprobeError, match=r"'efficientnet_lite0' is defined in .*"
                       r"model_registry.yaml and again in .*extra.yaml.*replaces: builtin"):
        load_registry()
    bad.write_text("models:\n  y: {family: timm}\n")
    with pytest.raises(VlmprobeError, match="lacks required field"):
        load_registry()


def test_real_lite0_weights_classify_chelsea_as_a_cat(lite0):
    """The in-order key mapping is right only if ImageNet predictions are."""
    import skimage.data

    x = lite0.transform_(Image.fromarray(skimage.data.chelsea()))[None]
    feats = lite0.encode_images(x)
    assert feats.shape == (1, 1280) and feats.dtype == torch.float32
    logits = lite0.model_.classifier(feats)
    top = int(logits.argmax())
    assert top in (281, 282, 283, 284, 285), top  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    coffee = lite0.transform_(Image.fromarray(skimage.data.coffee()))[None]
    assert int(lite0.model_.classifier(lite0.encode_images(coffee)).argmax()) == 967  # espresso


def test_lite0_weights_checksum_is_the_shipped_file(lite0):
    from vlmprobe.encoders.timm_family import _package_file
    from vlmprobe.provenance import sha256_file

    entry = lite0.entry
    assert lite0.weights_sha256_ == sha256_file(_package_file(entry.source, entry.weights_file))


def test_random_baseline_is_seeded_and_differs_from_pretrained(lite0):
    from vlmprobe.encoders import load_encoder

    a = load_encoder("efficientnet_lite0_random", "cpu")
    b = load_encoder("efficientnet_lite0_random", "cpu")
    assert a.weights_sha256_ == b.weights_sha256_ != lite0.weights_sha256_
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(a.encode_images(x), b.encode_images(x))


def test_wrong_embed_dim_in_entry_is_caught(lite0):
    from dataclasses import replace

    from vlmprobe.encoders import load_encoder

    enc = load_encoder(replace(lite0.entry, embed_dim=512), "cpu")
    with pytest.raises(VlmprobeError, match="embed_dim=512"):
        enc.encode_images(torch.zeros(1, 3, 224, 224))


def test_in_order_mapping_refuses_mismatched_checkpoint(tmp_path):
    import timm

    from vlmprobe.encoders.timm_family import load_state_dict_in_order

    model = timm.create_model("efficientnet_lite0")
    sd = dict(model.state_dict())
    sd.popitem()
    with pytest.raises(VlmprobeError, match="tensors"):
        load_state_dict_in_order(model, sd, tmp_path / "w.pth")
    swapped = dict(model.state_dict())
    k0, k1 = list(swapped)[:2]
    swapped[k0], swapped[k1] = swapped[k1], swapped[k0]
    bad = {f"k{i}": v for i, v in enumerate(swapped.values())}
    with pytest.raises(VlmprobeError, match="does not match"):
        load_state_dict_in_order(model, bad, tmp_path / "w.pth")


def test_every_family_refuses_an_unknown_tap_before_loading():
    from dataclasses import replace

    from vlmprobe.encoders.base import FAMILIES
    from vlmprobe.registry import load_registry

    by_family = {e.family: e for e in load_registry().values()}
    assert set(by_family) == set(FAMILIES)
    for family, cls in FAMILIES.items():
        entry = replace(by_family[family], tap="nope")
        with pytest.raises(VlmprobeError, match=f"{family} entry .*tap 'nope' unknown; valid: "
                                                f"{', '.join(cls.taps)}"):
            cls(entry).load()
