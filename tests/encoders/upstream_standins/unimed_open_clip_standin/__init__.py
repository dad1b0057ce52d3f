"""STAND-IN for UniMed-CLIP's open_clip fork (mbzuai-oryx/UniMed-CLIP@6f091778:
``get_mean_std()`` and the signature of src/open_clip/factory.py's
``create_model_and_transforms``; the eval transform of its transform.py); tiny random model,
not UniMed-CLIP. See ../README.md."""
import torch
from torchvision import transforms as T

TRUNK, PROJ = 24, 16


def get_mean_std():
    return (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class TinyClip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Sequential(torch.nn.Conv2d(3, TRUNK, 16, stride=16),
                                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                          torch.nn.Linear(TRUNK, PROJ))

    def encode_image(self, image, normalize=False):
        x = self.visual(image)
        return x / x.norm(dim=-1, keepdim=True) if normalize else x


def create_model_and_transforms(model_name, pretrained="", precision="fp32", device="cpu",
                                jit=False, force_quick_gelu=False, pretrained_image=False,
                                mean=None, std=None, inmem=False, clip_model="CLIP",
                                text_encoder_name=None):
    assert force_quick_gelu and text_encoder_name and inmem
    model = TinyClip()
    model.load_state_dict(torch.load(pretrained, map_location="cpu", weights_only=True))
    size = 336 if "336" in model_name else 224
    preprocess = T.Compose([T.Resize(size, T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                            T.ToTensor(), T.Normalize(mean, std)])
    return model.to(device), None, preprocess
