"""Fast registry entries for plumbing tests, added the way users add models ($VLMPROBE_REGISTRY).

``lite0_random_64`` is the registry's efficientnet_lite0 architecture with seeded random weights
at a 64-pixel input, so tests (subprocesses too) exercise the real load/transform/forward path at a
fraction of the 224-pixel cost; ``vit_random_64`` (+ ``_cmp``: the same weights, another tap) does
the same for a timm ViT. The ``tiny_model`` fixture (conftest.py) registers them.
"""
from __future__ import annotations

MODEL, DATASET, VIT = "lite0_random_64", "breastus", "vit_random_64"
TINY_REGISTRY = f"""schema_version: 1
models:
  {MODEL}:
    family: timm
    architecture: efficientnet_lite0
    source: random
    seed: 0
    tap: pooled
    embed_dim: 1280
    preprocess: {{image_size: 64, resize: shortest, resize_size: 72, interpolation: bicubic, stats: imagenet}}
    baseline: true
    licence: apache-2.0
    description: efficientnet_lite0 with seeded random weights at 64 px, for fast extraction tests.
  {VIT}:
    family: timm
    architecture: vit_tiny_patch16_224
    model_kwargs: {{img_size: 64, depth: 2}}
    source: random
    seed: 0
    tap: pooled
    embed_dim: 192
    preprocess: {{image_size: 64, resize: shortest, resize_size: 72, interpolation: bicubic, stats: imagenet}}
    licence: apache-2.0
    description: a 2-block ViT-Tiny with seeded random weights at 64 px, for tap tests.
  {VIT}_cmp:
    family: timm
    architecture: vit_tiny_patch16_224
    model_kwargs: {{img_size: 64, depth: 2}}
    source: random
    seed: 0
    tap: cls_mean_patch
    embed_dim: 384
    preprocess: {{image_size: 64, resize: shortest, resize_size: 72, interpolation: bicubic, stats: imagenet}}
    licence: apache-2.0
    description: the same ViT with Virchow's tap (CLS + mean of patch tokens).
"""
