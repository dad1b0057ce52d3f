"""GPU out-of-memory during extraction splits the batch instead of crashing (checked on CPU: the
model's forward_features raises CUDA's OOM error above a batch size, as a full GPU would)."""
import numpy as np
import pytest
import torch

from vlmprobe.encoders import load_encoder
from vlmprobe.extraction import encode
from vlmprobe.validation import VlmprobeError


class _FitsAtMost:
    """Wraps forward_features: batches larger than ``limit`` raise torch's CUDA OOM error."""

    def __init__(self, forward, limit: int):
        self.forward, self.limit, self.sizes = forward, limit, []

    def __call__(self, pixels):
        self.sizes.append(len(pixels))
        if len(pixels) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.forward(pixels)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("efficientnet_lite0_random", "cpu")


def test_oom_splits_the_batch_and_gives_the_same_embeddings(encoder, monkeypatch):
    pixels = torch.randn(10, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    whole = encode(encoder, pixels)[encoder.entry.tap]
    limited = _FitsAtMost(encoder.model_.forward_features, limit=3)
    monkeypatch.setattr(encoder.model_, "forward_features", limited)
    split = encode(encoder, pixels)[encoder.entry.tap]
    assert limited.sizes[0] == 10 and max(s for s in limited.sizes if s <= 3) <= 3
    assert sum(s for s in limited.sizes if s <= 3) == 10  # every image encoded exactly once
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-5)


def test_oom_on_a_single_image_is_a_clear_error(encoder, monkeypatch):
    monkeypatch.setattr(encoder.model_, "forward_features",
                        _FitsAtMost(encoder.model_.forward_features, limit=0))
    with pytest.raises(VlmprobeError, match="One image does not fit in GPU memory.*bf16"):
        encode(encoder, torch.zeros(4, 3, 224, 224))
