"""Hub-shaped fixtures: tiny random-weight models written into a temporary HF cache.

Each fixture has the real repo id, file names, file formats and cache layout
(``models--org--name/{blobs,snapshots/<commit>,refs/main}``, snapshot files linked to blobs), so
the production loaders find it offline exactly as they would find a downloaded model; only the
widths are tiny. Widths are chosen to differ from each other (and from the real models), so a
wrong tap or a registry dim slipping through fails the tests.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
MEDSIGLIP_REPO = "google/medsiglip-448"


@dataclass(frozen=True)
class HubFixture:
    repo_id: str
    snapshot: Path  # the snapshot folder (loadable as a local directory too)
    weights: Path  # the weights file the family should load and hash
    tap_dim: int  # width of the entry's tap on this fixture


def use_hub_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub and transformers at ``cache``, offline.

    Setting the environment alone is not enough once the libraries are imported: both copy
    HF_HUB_CACHE / HF_HUB_OFFLINE into module constants at import time, so those are patched too.
    """
    import huggingface_hub.constants as hub_constants
    import transformers.utils.hub as transformers_hub

    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers_hub, "TRANSFORMERS_CACHE", str(cache))
    monkeypatch.setattr(transformers_hub, "_is_offline_mode", True)


def write_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` as the hub cache does; return the snapshot folder.

    Blobs are named as on the hub: sha256 for LFS files (weights), git blob sha1 for the rest.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if name.endswith((".bin", ".safetensors")):
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        os.symlink(Path("..", "..", "blobs", blob), snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no newline: huggingface_hub reads it verbatim
    return snapshot


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2).encode()


def write_biomedclip(cache: Path) -> HubFixture:
    """BiomedCLIP's layout: ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``, and the
    BiomedBERT repo's ``config.json`` that open_clip's HF text tower reads.

    Same config keys as the hub repo, with vit_tiny (width 192) for vit_base, a 2-layer BERT of
    width 64 for BiomedBERT, and a 48-d projection for 512.
    """
    from open_clip.model import CustomTextCLIP
    from transformers import BertConfig

    bert = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, architectures=["BertForMaskedLM"])
    bert_snapshot = write_snapshot(cache, BIOMEDBERT_REPO,
                                   {"config.json": bert.to_json_string().encode()})
    model_cfg = {
        "embed_dim": 48,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": BIOMEDBERT_REPO, "hf_tokenizer_name": BIOMEDBERT_REPO,
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256},
    }
    preprocess_cfg = {"mean": [0.48145466, 0.4578275, 0.40821073],
                      "std": [0.26862954, 0.26130258, 0.27577711]}
    # Built from the local BiomedBERT snapshot so that writing needs no patched cache.
    text_cfg = {**model_cfg["text_cfg"], "hf_model_name": str(bert_snapshot),
                "hf_model_pretrained": False}
    torch.manual_seed(0)
    model = CustomTextCLIP(**{**model_cfg, "text_cfg": text_cfg})
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    snapshot = write_snapshot(cache, BIOMEDCLIP_REPO, {
        "open_clip_config.json": _json({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}),
        "open_clip_pytorch_model.bin": weights.getvalue(),
    })
    return HubFixture(BIOMEDCLIP_REPO, snapshot, snapshot / "open_clip_pytorch_model.bin", 48)


def write_medsiglip(cache: Path) -> HubFixture:
    """MedSigLIP's layout: a full SiglipModel (``config.json`` + ``model.safetensors``, vision and
    text towers) and a SiglipImageProcessor ``preprocessor_config.json``; the family loads only
    the vision tower from it, as from the real repo. Vision width 32 (SigLIP has no projection,
    so pooler_output and the CLS token are both 32 wide: tests compare values to tell them apart).
    """
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    config = SiglipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 448, "patch_size": 16},
        text_config={"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 4,
                     "max_position_embeddings": 16})
    torch.manual_seed(0)
    processor = SiglipImageProcessor(size={"height": 448, "width": 448})
    with tempfile.TemporaryDirectory() as tmp:
        SiglipModel(config).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    snapshot = write_snapshot(cache, MEDSIGLIP_REPO, files)
    return HubFixture(MEDSIGLIP_REPO, snapshot, snapshot / "model.safetensors", 32)
