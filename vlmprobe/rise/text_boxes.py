"""Where burnt-in text is: a user's box file, or a detector for overlays drawn on the image.

RISE scores "how much of the evidence sits on the text" against text boxes. The phantom knows
its boxes (manifest columns ``text_x0..text_y1``); for real data a user supplies a CSV
(``relpath,x0,y0,x1,y1``, several rows per image allowed) or asks for :func:`detect_text_boxes`.

The detector looks for what makes an overlay an overlay rather than anatomy: strokes of one flat,
bright colour (a 3 x 3 neighbourhood spanning at most ``tol`` grey levels), which speckle,
tissue and noise never are, grouped along a line into a box wider than tall. Strokes must be at
least 3 px wide (text about 15 px tall or more); thinner text goes undetected. On the breastus
phantom it finds every word's box with IoU >= 0.5 (tests/test_text_boxes.py). It is a heuristic:
check its boxes on your data (the RISE figures draw them) before trusting the numbers.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..validation import VlmprobeError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, end-exclusive (as slicing)


def detect_text_boxes(image, tol: float = 6, min_brightness: float = 150,
                      min_height: int = 6) -> list[Box]:
    """Boxes of flat, bright, line-shaped overlays in ``image`` (PIL image or array)."""
    g = np.asarray(image, dtype=np.float32)
    if g.ndim == 3:
        g = g[..., :3].mean(-1)
    span = ndimage.maximum_filter(g, 3) - ndimage.minimum_filter(g, 3)
    flat = ndimage.binary_dilation((span <= tol) & (g >= min_brightness), np.ones((3, 3), bool))
    # join the letters of a word, then the rows of a letter
    joined = ndimage.binary_closing(flat, structure=np.ones((1, 13), bool))
    joined = ndimage.binary_closing(joined, structure=np.ones((9, 1), bool))
    labels, _ = ndimage.label(joined)
    boxes = []
    for rows, cols in ndimage.find_objects(labels):
        h, w = rows.stop - rows.start, cols.stop - cols.start
        if h >= min_height and w >= 1.5 * h and flat[rows, cols].mean() > 0.2:
            boxes.append((cols.start, rows.start, cols.stop, rows.stop))
    return boxes


def read_box_file(path: str | Path) -> dict[str, list[Box]]:
    """``relpath,x0,y0,x1,y1`` rows (header required) -> boxes per relpath."""
    path = Path(path)
    if not path.is_file():
        raise VlmprobeError(f"Text box file {path} does not exist.")
    boxes: dict[str, list[Box]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = ["relpath", "x0", "y0", "x1", "y1"]
        if reader.fieldnames is None or not set(need) <= set(reader.fieldnames):
            raise VlmprobeError(f"{path} must be a CSV with the header {','.join(need)}; found "
                                f"{reader.fieldnames}.")
        for line, row in enumerate(reader, start=2):
            try:
                box = tuple(int(float(row[k])) for k in need[1:])
            except (TypeError, ValueError):
                raise VlmprobeError(f"{path}, line {line}: x0, y0, x1, y1 must be numbers; got "
                                    f"{[row[k] for k in need[1:]]}.") from None
            if box[2] <= box[0] or box[3] <= box[1]:
                raise VlmprobeError(f"{path}, line {line}: box {box} is empty (need x1 > x0 and "
                                    "y1 > y0, end-exclusive pixel bounds).")
            boxes.setdefault(row["relpath"], []).append(box)
    return boxes


def boxes_mask(boxes: list[Box], size: tuple[int, int]) -> np.ndarray:
    """Union of ``boxes`` as a bool [h, w] mask for an image of PIL ``size`` (w, h)."""
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


def box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
