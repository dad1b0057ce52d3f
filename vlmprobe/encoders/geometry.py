"""Where each model-input pixel comes from in the original image, and back.

The official transforms only resize, pad and crop (``PreprocessCfg.resize``: shortest + centre
crop, squash, pad_square, longest_pad), so the map is axis-aligned affine:
``x_in + 0.5 = (x_orig + 0.5) * scale_x + shift_x`` (pixel centres), likewise for y. RISE runs in
model-input coordinates; :meth:`InputGeometry.to_original` carries a map back onto the image so
lesion masks and text boxes drawn in original coordinates can be scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..registry import PreprocessCfg


@dataclass(frozen=True)
class InputGeometry:
    orig_size: tuple[int, int]   # (width, height) of the original image
    input_size: tuple[int, int]  # (width, height) the model sees
    scale: tuple[float, float]
    shift: tuple[float, float]

    def to_input(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous input coordinates of original pixel centres (x, y)."""
        return ((np.asarray(x) + 0.5) * self.scale[0] + self.shift[0] - 0.5,
                (np.asarray(y) + 0.5) * self.scale[1] + self.shift[1] - 0.5)

    def seen_mask(self) -> np.ndarray:
        """Boolean [h, w]: original pixels whose centre lands inside the model input."""
        w, h = self.orig_size
        xi, yi = self.to_input(np.arange(w), np.arange(h))
        in_x = (xi >= -0.5) & (xi <= self.input_size[0] - 0.5)
        in_y = (yi >= -0.5) & (yi <= self.input_size[1] - 0.5)
        return in_y[:, None] & in_x[None, :]

    @property
    def unseen_fraction(self) -> float:
        """Fraction of the original image the model never sees (e.g. corners cut by a crop)."""
        return float(1.0 - self.seen_mask().mean())

    def to_original(self, input_map: np.ndarray) -> np.ndarray:
        """Resample an [H_in, W_in] map onto the original [h, w] grid; NaN where unseen."""
        w, h = self.orig_size
        xi, yi = self.to_input(np.arange(w), np.arange(h))
        yy, xx = np.meshgrid(yi, xi, indexing="ij")
        out = ndimage.map_coordinates(np.asarray(input_map, dtype=np.float64), [yy, xx],
                                      order=1, mode="nearest")
        out[~self.seen_mask()] = np.nan
        return out


def _resize_shortest(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's rule for ``Resize(int)``: short side to ``size``, long side truncated."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def input_geometry(cfg: PreprocessCfg, width: int, height: int) -> InputGeometry:
    """The geometry of ``cfg``'s transform applied to a ``width`` x ``height`` image."""
    out = cfg.image_size
    if cfg.resize == "squash":
        return InputGeometry((width, height), (out, out), (out / width, out / height), (0.0, 0.0))
    if cfg.resize == "longest_pad":
        # longer side to ``out``, sizes truncated (as FLAIR's preprocess_image), image at the
        # top-left of a zero canvas: no crop, the padding is input the image never fills
        ratio = max(width, height) / out
        new_w, new_h = int(width / ratio), int(height / ratio)
        return InputGeometry((width, height), (out, out), (new_w / width, new_h / height),
                             (0.0, 0.0))
    pad_x = pad_y = 0
    if cfg.resize == "pad_square":
        side = max(width, height)
        pad_x, pad_y = (side - width) // 2, (side - height) // 2
        w0, h0 = side, side
    else:
        w0, h0 = width, height
    rw, rh = _resize_shortest(w0, h0, cfg.resize_size or out)
    sx, sy = rw / w0, rh / h0
    left, top = int(round((rw - out) / 2.0)), int(round((rh - out) / 2.0))
    return InputGeometry((width, height), (out, out), (sx, sy),
                         (pad_x * sx - left, pad_y * sy - top))
