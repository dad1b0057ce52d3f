"""STAND-IN for bfshi/scaling_on_scales' ``s2wrapper.forward`` (signature of s2wrapper/core.py
@31688b1e; square images, split_mode='resize', bnc output, no prefix tokens only), written
without einops; not the upstream code. See ../README.md."""
import math

import torch
import torch.nn.functional as F


def _split(x, n):
    """[B, C, H, W] -> [n*n*B, C, H/n, W/n], tiles in row-major order, batch innermost."""
    h = x.shape[-1] // n
    return torch.cat([x[..., i * h:(i + 1) * h, j * h:(j + 1) * h]
                      for i in range(n) for j in range(n)], dim=0)


def _merge(x, n):
    """Inverse of _split on feature maps [n*n*B, C, h, w] -> [B, C, n*h, n*w]."""
    tiles = x.split(x.shape[0] // (n * n), dim=0)
    return torch.cat([torch.cat(tiles[i * n:(i + 1) * n], dim=-1) for i in range(n)], dim=-2)


def forward(model, input, scales=None, img_sizes=None, max_split_size=None, split_mode="resize",
            resize_output_to_idx=0, num_prefix_token=0, output_shape="bnc", split_forward=False):
    assert split_mode == "resize" and output_shape == "bnc" and num_prefix_token == 0
    outs = []
    for size in img_sizes:
        n = math.ceil(size / max_split_size)
        x = F.interpolate(input.float(), size=(size, size), mode="bicubic")
        out = model(_split(x, n))  # [n*n*B, tokens, C]
        side = int(out.shape[1] ** 0.5)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        outs.append(_merge(out, n))
    target = outs[resize_output_to_idx].shape[-2:]
    out = torch.cat([F.interpolate(o, size=target, mode="area") for o in outs], dim=1)
    return out.flatten(2).transpose(1, 2)
