"""The ``pixels`` null baseline encoder: whole image squashed to 32x32 RGB, in [-1, 1], flattened
channel by channel (d = 3,072), no weights."""
import numpy as np
import pytest
import torch
from PIL import Image

from vlmprobe.encoders import load_encoder
from vlmprobe.registry import get_model_entry


def test_pixels_entry_is_a_baseline_of_width_3_x_32_x_32():
    e = get_model_entry("pixels")
    assert e.baseline and e.family == "pixels" and e.embed_dim == 3 * 32 * 32


def test_a_32px_image_is_its_own_normalized_pixels_in_chw_order():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    enc = load_encoder("pixels", device="cpu")
    out = enc.encode_images(enc.transform_(Image.fromarray(img))[None])[0]
    expected = torch.from_numpy(img.transpose(2, 0, 1).reshape(-1) / 127.5 - 1).float()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_whole_image_is_kept_without_crop():
    # a wide image, left half black, right half white: squashed, the halves stay halves
    img = np.zeros((40, 200, 3), np.uint8)
    img[:, 100:] = 255
    enc = load_encoder("pixels", device="cpu")
    x = enc.transform_(Image.fromarray(img))
    assert x.shape == (3, 32, 32)
    assert x[:, :, :15].max() == pytest.approx(-1) and x[:, :, 17:].min() == pytest.approx(1)
