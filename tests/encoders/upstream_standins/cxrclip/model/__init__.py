"""STAND-IN for kakaobrain/cxr-clip's ``cxrclip.model`` (``build_model(model_config,
loss_config, tokenizer)`` and CXRClip.encode_image / image_projection @fd9fac5e); tiny random
model, not CXR-CLIP. See ../../README.md."""
import torch

TRUNK, PROJ = 24, 16


class CXRClip(torch.nn.Module):
    def __init__(self, model_config, all_loss_config, tokenizer=None):
        super().__init__()
        assert tokenizer is not None and tokenizer.vocab_size > 0
        self.model_config = model_config
        self.image_encoder = torch.nn.Sequential(torch.nn.Conv2d(3, TRUNK, 16, stride=16),
                                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.image_projection = torch.nn.Linear(TRUNK, PROJ)
        self.projection = True

    def encode_image(self, image):
        return self.image_encoder(image)  # resnet: pooled features, no CLS selection


def build_model(model_config, loss_config, tokenizer=None):
    if model_config["name"].lower() != "clip_custom":
        raise KeyError(f"Not supported model: {model_config['name']}")
    return CXRClip(model_config, loss_config, tokenizer)
