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
    HF_HUB_CACHE / HF_HUB_OFFLINE into module constants at import time, so those are patched too,
    and huggingface_hub's HTTP sessions (cached per thread, made offline or online as the mode
    was when they were first used) are dropped.
    """
    import huggingface_hub.constants as hub_constants
    import transformers.utils.hub as transformers_hub
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers_hub, "TRANSFORMERS_CACHE", str(cache))
    monkeypatch.setattr(transformers_hub, "_is_offline_mode", True)
    reset_sessions()


def registry_facts_transform(cfg):
    """The transform a registry entry's preprocess facts describe, in torchvision terms: the
    official transform must agree with it, so geometry and cache keys describe the real one."""
    from torchvision import transforms as T

    interp = T.InterpolationMode(cfg.interpolation)
    if cfg.resize == "squash":
        resize = [T.Resize((cfg.image_size, cfg.image_size), interp)]
    else:
        resize = [T.Resize(cfg.resize_size or cfg.image_size, interp), T.CenterCrop(cfg.image_size)]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


def sample_images() -> dict:
    """Real 8-bit inputs for transform equality: a scikit-image photo (451 x 300, RGB) and a CT
    slice decoded by vlmprobe's fixed default DICOM intensity pipeline (window from the tags)."""
    import pydicom.data
    from PIL import Image
    from skimage.data import chelsea

    from vlmprobe.data import read_dicom

    return {"chelsea": Image.fromarray(chelsea()),
            "ct_dicom": read_dicom(pydicom.data.get_testdata_file("CT_small.dcm"), "tags")}


def marker_positions(encoder, width: int, height: int):
    """Where a bright 4x4 marker lands after the encoder's official transform (intensity
    centroid) and where vlmprobe.encoders.geometry says it lands, in input pixels."""
    import numpy as np
    from PIL import Image

    x0, y0 = int(0.55 * width), int(0.3 * height)  # inside every crop tested
    plain = np.full((height, width, 3), 40, np.uint8)
    marked = plain.copy()
    marked[y0:y0 + 4, x0:x0 + 4] = 255
    pixels = encoder.transform_(Image.fromarray(marked))[0]
    geometry = encoder.geometry(width, height)
    assert tuple(pixels.shape[::-1]) == geometry.input_size
    # the marker alone: padding and background cancel against the unmarked image
    weight = (pixels - encoder.transform_(Image.fromarray(plain))[0]).clamp(min=0)
    ys, xs = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in pixels.shape),
                            indexing="ij")
    found = (float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum()))
    return found, geometry.to_input(x0 + 1.5, y0 + 1.5)


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


CLIP_L336_REPO = "openai/clip-vit-large-patch14-336"
LLAVA_MED_REPO = "microsoft/llava-med-v1.5-mistral-7b"
LLAVA_HF_REPO = "llava-hf/llava-1.5-7b-hf"
#: fixture widths: CLIP tower 40, CLIP projection 24, LLM (projector output) 56
TOWER, CLIP_PROJ, LLM = 40, 24, 56


def _clip_model(seed: int):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        vision_config={"hidden_size": TOWER, "intermediate_size": 64, "num_hidden_layers": 3,
                       "num_attention_heads": 4, "image_size": 336, "patch_size": 14},
        text_config={"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 4,
                     "max_position_embeddings": 16},
        projection_dim=CLIP_PROJ)
    torch.manual_seed(seed)
    return CLIPModel(config)


def _safetensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def write_clip_l336(cache: Path) -> HubFixture:
    """openai/clip-vit-large-patch14-336: a CLIPModel (``config.json`` + ``model.safetensors``)
    and its CLIPImageProcessor config (shortest side 336 bicubic, crop 336, CLIP mean/std)."""
    from transformers import CLIPImageProcessor

    with tempfile.TemporaryDirectory() as tmp:
        _clip_model(seed=0).save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": 336},
                           crop_size={"height": 336, "width": 336}).save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    snapshot = write_snapshot(cache, CLIP_L336_REPO, files)
    return HubFixture(CLIP_L336_REPO, snapshot, snapshot / "model.safetensors", CLIP_PROJ)


def _llm_and_projector(prefix: str, names: tuple[str, str], seed: int) -> dict:
    """A stand-in for the language model's tensors (never read) and LLaVA's 2-layer projector."""
    g = torch.Generator().manual_seed(seed)
    return {"lm_head.weight": torch.randn(100, LLM, generator=g),
            f"{prefix}{names[0]}.weight": torch.randn(LLM, TOWER, generator=g) * 0.1,
            f"{prefix}{names[0]}.bias": torch.randn(LLM, generator=g) * 0.1,
            f"{prefix}{names[1]}.weight": torch.randn(LLM, LLM, generator=g) * 0.1,
            f"{prefix}{names[1]}.bias": torch.randn(LLM, generator=g) * 0.1}


def _sharded(tensors: dict, n: int = 2) -> dict[str, bytes]:
    """``model-0000i-of-0000n.safetensors`` shards + ``model.safetensors.index.json``, keys split
    in order so the tower straddles a shard boundary, as in the real 7B checkpoints."""
    keys = list(tensors)
    parts = [keys[i * len(keys) // n:(i + 1) * len(keys) // n] for i in range(n)]
    files, weight_map = {}, {}
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        files[name] = _safetensors({k: tensors[k] for k in part})
        weight_map.update({k: name for k in part})
    files["model.safetensors.index.json"] = _json({"metadata": {}, "weight_map": weight_map})
    return files


def write_llava_med(cache: Path, tower_seed: int = 1, repo_id: str = LLAVA_MED_REPO,
                    s2: bool = False) -> HubFixture:
    """LLaVA-Med v1.5's layout: ``model_type: llava_mistral`` config (which stock transformers
    cannot parse), sharded safetensors with ``model.vision_tower.vision_tower.*`` and
    ``model.mm_projector.{0,2}`` keys, no preprocessor config (LLaVA-Med uses the tower repo's).
    ``tower_seed`` != 0 gives a tower that differs from the openai fixture's."""
    tower = _clip_model(tower_seed).vision_model.state_dict()
    width = 3 * TOWER if s2 else TOWER  # LLaVA-S2 concatenates three scales
    projector = _llm_and_projector("model.mm_projector.", ("0", "2"), seed=2)
    if s2:
        projector["model.mm_projector.0.weight"] = torch.randn(LLM, width) * 0.1
    tensors = {"model.embed_tokens.weight": torch.zeros(100, LLM),
               **{f"model.vision_tower.vision_tower.vision_model.{k}": v.half()
                  for k, v in tower.items()}, **projector}
    config = {"architectures": ["LlavaMistralForCausalLM"], "model_type": "llava_mistral",
              "hidden_size": LLM, "mm_hidden_size": width, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_tower": CLIP_L336_REPO, "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
              "torch_dtype": "float16", "transformers_version": "4.36.2"}
    if s2:
        config["s2_scales"] = "336,672,1008"
    snapshot = write_snapshot(cache, repo_id, {"config.json": _json(config), **_sharded(tensors)})
    return HubFixture(repo_id, snapshot, snapshot / "model.safetensors.index.json", width)


def write_llava_hf(cache: Path) -> HubFixture:
    """llava-hf/llava-1.5-7b-hf's layout: ``model_type: llava`` with ``vision_config`` inside,
    ``vision_tower.vision_model.*`` and ``multi_modal_projector.linear_{1,2}`` keys, and its own
    preprocessor config, and a first shard of language-model tensors only. Its tower tensors are
    the openai fixture's, as in the real repos."""
    from transformers import CLIPImageProcessor

    clip = _clip_model(seed=0)
    llm = {f"language_model.model.layers.{i}.weight": torch.zeros(LLM) for i in range(80)}
    tensors = {**llm, **{f"vision_tower.vision_model.{k}": v
                  for k, v in clip.vision_model.state_dict().items()},
               **_llm_and_projector("multi_modal_projector.", ("linear_1", "linear_2"), seed=3)}
    config = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
              "vision_config": {**clip.config.vision_config.to_dict(), "model_type": "clip_vision_model"},
              "text_config": {"model_type": "llama", "hidden_size": LLM},
              "projector_hidden_act": "gelu", "vision_feature_layer": -2,
              "vision_feature_select_strategy": "default"}
    with tempfile.TemporaryDirectory() as tmp:
        CLIPImageProcessor(size={"shortest_edge": 336},
                           crop_size={"height": 336, "width": 336}).save_pretrained(tmp)
        pre = (Path(tmp) / "preprocessor_config.json").read_bytes()
    snapshot = write_snapshot(cache, LLAVA_HF_REPO, {"config.json": _json(config),
                                                     "preprocessor_config.json": pre,
                                                     **_sharded(tensors, n=3)})
    return HubFixture(LLAVA_HF_REPO, snapshot, snapshot / "model.safetensors.index.json", TOWER)


UNI_REPO = "MahmoodLab/UNI"
VIRCHOW_REPO = "paige-ai/Virchow"


def write_timm_hub(cache: Path, repo_id: str, kwargs: dict, data_config: dict,
                   arch: str = "vit_tiny_patch16_224") -> HubFixture:
    """A timm hub repo as timm's own ``push_to_hub`` writes it (``save_for_hf``: ``config.json``
    with architecture + pretrained_cfg, ``model.safetensors``); by default vit_tiny (width 192)
    stands in for the real ViT, built with the entry's kwargs so its tensors fit them."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(arch, **{"num_classes": 0, **kwargs})
    model.pretrained_cfg = {**model.pretrained_cfg, **data_config}
    classes = {k: None for k, v in kwargs.items()  # layer classes are not JSON: dropped
               if not isinstance(v, (bool, int, float, str))}
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hf(model, tmp, safe_serialization=True, model_args=classes)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    # As UNI's and Virchow's repos: no model_args, the card's kwargs go to create_model.
    config = json.loads(files["config.json"])
    config.pop("model_args", None)
    files["config.json"] = _json(config)
    snapshot = write_snapshot(cache, repo_id, files)
    return HubFixture(repo_id, snapshot, snapshot / "model.safetensors", 192)


def write_clip_repo(cache: Path, repo_id: str, mean, std, seed: int = 4) -> HubFixture:
    """A transformers CLIPModel repo (PLIP, PubMedCLIP, MONET): ``config.json`` +
    ``model.safetensors`` + its CLIPImageProcessor config with the repo's mean/std. Vision width
    36, projection 20 (``image_embeds``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        vision_config={"hidden_size": 36, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 224, "patch_size": 32},
        text_config={"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 4,
                     "max_position_embeddings": 16},
        projection_dim=20)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        CLIPModel(config).save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                           image_mean=list(mean), image_std=list(std)).save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    snapshot = write_snapshot(cache, repo_id, files)
    return HubFixture(repo_id, snapshot, snapshot / "model.safetensors", 20)


def write_dinov2_repo(cache: Path, repo_id: str, resize: int, crop: int) -> HubFixture:
    """A transformers Dinov2Model repo (facebook/dinov2-large, microsoft/rad-dino) with its
    BitImageProcessor config (shortest side ``resize`` bicubic, crop ``crop``, ImageNet stats).
    Width 28; the CLS token (``cls`` tap) differs from pooler and mean values."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=28, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=56, patch_size=14, image_size=crop)
    torch.manual_seed(5)
    with tempfile.TemporaryDirectory() as tmp:
        Dinov2Model(config).save_pretrained(tmp)
        BitImageProcessor(size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop},
                          image_mean=[0.485, 0.456, 0.406],
                          image_std=[0.229, 0.224, 0.225]).save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    snapshot = write_snapshot(cache, repo_id, files)
    return HubFixture(repo_id, snapshot, snapshot / "model.safetensors", 28)


REMOTE_MODELING = '''\
"""Remote code of a hub-shaped fixture (as LLM2CLIP's repo ships its own modeling file)."""
import torch
from transformers import PretrainedConfig, PreTrainedModel


class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny_remote_clip"

    def __init__(self, width=30, proj=18, **kwargs):
        self.width, self.proj = width, proj
        super().__init__(**kwargs)


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.patch = torch.nn.Conv2d(3, config.width, 28, stride=28)
        self.visual_projection = torch.nn.Linear(config.width, config.proj)
        self.post_init()

    def get_image_features(self, pixel_values):
        return self.visual_projection(self.patch(pixel_values).mean((2, 3)))
'''


def write_remote_code_repo(cache: Path, repo_id: str, processor=None) -> HubFixture:
    """A trust_remote_code repo: ``config.json`` with ``auto_map`` pointing at
    ``modeling_tiny.py`` in the repo, ``model.safetensors``, and ``processor``'s config if given
    (ConceptCLIP ships its own; LLM2CLIP has none, its entry's processor_source supplies it).
    The modeling code is the fixture's own: this proves the adapter's remote-code path and
    opt-in, not the real repos' code."""
    import importlib.util
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "modeling_tiny.py").write_text(REMOTE_MODELING)
        spec = importlib.util.spec_from_file_location("modeling_tiny_fixture",
                                                      Path(tmp) / "modeling_tiny.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        torch.manual_seed(6)
        model = module.TinyRemoteModel(module.TinyRemoteConfig())
        model.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "config.json").read_text())
        config["auto_map"] = {"AutoConfig": "modeling_tiny.TinyRemoteConfig",
                              "AutoModel": "modeling_tiny.TinyRemoteModel"}
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        if processor is not None:
            processor.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    snapshot = write_snapshot(cache, repo_id, files)
    return HubFixture(repo_id, snapshot, snapshot / "model.safetensors", 18)


#: a tiny open_clip ViT config (vision width 32, projection 20)
TINY_OPEN_CLIP = {"embed_dim": 20,
                  "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32,
                                 "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                               "layers": 1}}


def write_open_clip_repo(cache: Path, repo_id: str, model_cfg: dict, preprocess_cfg: dict,
                         both_files: bool = False) -> HubFixture:
    """An open_clip hub repo: ``open_clip_config.json`` and the weights as
    ``open_clip_pytorch_model.bin`` (QuiltNet), or also as ``open_clip_model.safetensors``
    (``both_files``: the timm/ and laion/ repos open_clip's pretrained tags name). A
    ``custom_text`` config builds a CustomTextCLIP, as open_clip does."""
    from open_clip.model import CLIP, CustomTextCLIP

    torch.manual_seed(7)
    cfg = dict(model_cfg)
    model = (CustomTextCLIP if cfg.pop("custom_text", False) else CLIP)(**cfg)
    files = {"open_clip_config.json": _json({"model_cfg": model_cfg,
                                             "preprocess_cfg": preprocess_cfg}),
             "open_clip_pytorch_model.bin": _torch_bytes(model.state_dict())}
    if both_files:
        files["open_clip_model.safetensors"] = _safetensors(model.state_dict())
    snapshot = write_snapshot(cache, repo_id, files)
    loaded = "open_clip_model.safetensors" if both_files else "open_clip_pytorch_model.bin"
    return HubFixture(repo_id, snapshot, snapshot / loaded, model_cfg["embed_dim"])


def _torch_bytes(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_medgemma(cache: Path) -> HubFixture:
    """google/medgemma-4b-it's layout: a Gemma3ForConditionalGeneration (``config.json`` with
    text and SigLIP vision configs, ``vision_use_head: false``, 896 px / patch 14 = 4096 tokens)
    and its Gemma3ImageProcessor config. Vision width 24, text width 32."""
    from transformers import AutoModelForImageTextToText, Gemma3Config, Gemma3ImageProcessor

    config = Gemma3Config(
        text_config={"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "head_dim": 16},
        vision_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 896, "patch_size": 14,
                       "vision_use_head": False},
        mm_tokens_per_image=256, image_token_index=299, boi_token_index=297, eoi_token_index=298)
    torch.manual_seed(8)
    with tempfile.TemporaryDirectory() as tmp:
        AutoModelForImageTextToText.from_config(config).save_pretrained(tmp)
        Gemma3ImageProcessor(size={"height": 896, "width": 896}).save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    snapshot = write_snapshot(cache, "google/medgemma-4b-it", files)
    return HubFixture("google/medgemma-4b-it", snapshot, snapshot / "model.safetensors", 24)
