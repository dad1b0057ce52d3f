"""STAND-IN for mahmoodlab/CONCH's ``conch.open_clip_custom`` (signatures of factory.py @3a919e39
and CoCa.encode_image @e9c9e5b7); tiny random model, not CONCH. See ../../README.md."""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from torchvision import transforms as T

TRUNK, PROJ = 24, 16
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class TinyCoCa(torch.nn.Module):
    def __init__(self, image_size=448):
        super().__init__()
        self.image_size = image_size
        self.trunk = torch.nn.Conv2d(3, TRUNK, 16, stride=16)
        self.proj = torch.nn.Linear(TRUNK, PROJ)

    def forward_no_head(self, images, normalize=False):
        x = self.trunk(images).mean((2, 3))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, images, normalize=True, proj_contrast=True):
        x = self.forward_no_head(images)
        x = self.proj(x) if proj_contrast else x
        return F.normalize(x, dim=-1) if normalize else x


def create_model_from_pretrained(model_cfg, checkpoint_path: Optional[str] = None,
                                 device: Union[str, torch.device] = "cpu", jit: bool = False,
                                 force_image_size: Optional[Union[int, Tuple[int, int]]] = None,
                                 return_transform: bool = True,
                                 image_mean: Optional[Tuple[float, ...]] = None,
                                 image_std: Optional[Tuple[float, ...]] = None,
                                 cache_dir: Optional[str] = None,
                                 hf_auth_token: Optional[str] = None):
    assert model_cfg == "conch_ViT-B-16", model_cfg
    model = TinyCoCa()
    if checkpoint_path.startswith("hf_hub:"):
        repo = checkpoint_path[len("hf_hub:"):]
        hf_hub_download(repo, cache_dir=cache_dir, filename="meta.yaml", token=hf_auth_token)
        checkpoint_path = hf_hub_download(repo, cache_dir=cache_dir, filename="pytorch_model.bin",
                                          token=hf_auth_token)
    model.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=True))
    model.to(device)
    if not return_transform:
        return model
    preprocess = T.Compose([T.Resize(model.image_size, T.InterpolationMode.BICUBIC),
                            T.CenterCrop(model.image_size), T.ToTensor(),
                            T.Normalize(image_mean or OPENAI_MEAN, image_std or OPENAI_STD)])
    return model, preprocess
