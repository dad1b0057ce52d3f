"""STAND-IN for jusiro/FLAIR's ``flair`` package (FLAIRModel @04c2fd54: PyTorchModelHubMixin,
``vision_model`` = ResNet -> projection -> L2 norm, ``preprocess_image`` canvas); tiny random
model, not FLAIR. See ../README.md."""
import numpy as np
import torch
import torchvision
from huggingface_hub import PyTorchModelHubMixin

TRUNK, PROJ = 24, 16


class VisionModel(torch.nn.Module):
    def __init__(self, proj_dim=PROJ):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, TRUNK, 32, stride=32),
                                         torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.projection = torch.nn.Linear(TRUNK, proj_dim, bias=False)

    def forward(self, pixel_values):
        embed = self.projection(self.model(pixel_values))
        return embed / embed.norm(dim=-1, keepdim=True)


class FLAIRModel(torch.nn.Module, PyTorchModelHubMixin):
    def __init__(self, proj_dim=PROJ, image_size=512):
        super().__init__()
        self.image_size = image_size
        self.vision_model = VisionModel(proj_dim)

    def preprocess_image(self, image):
        """Upstream's behaviour: /255, longer side to image_size (sizes truncated), zero canvas
        padded right and bottom; returns [1, 3, S, S]."""
        image = np.float32(image)
        if image.max() > 0:
            image /= 255
        image = torch.tensor(np.transpose(image, (2, 0, 1))[None])
        scale = max(image.shape[-2:]) / self.image_size
        size = (int(image.shape[-2] / scale), int(image.shape[-1] / scale))
        image = torchvision.transforms.Resize(size, antialias=True)(image)
        pad = (0, self.image_size - image.shape[-1], 0, self.image_size - image.shape[-2])
        return torch.nn.functional.pad(image, pad).to(torch.float32)
