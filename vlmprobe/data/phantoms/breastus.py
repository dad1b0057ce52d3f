"""``breastus`` imitates BUSI (Al-Dhabyani et al. 2020): ``<out>/<class>/<class> (<i>).png`` for the
classes normal, benign, malignant, with a binary mask ``<class> (<i>)_mask.png`` beside each image
(all black for normal images, as in BUSI), in BUSI's proportions 133/437/210. Each image is
B-mode-like: tissue layers (skin, fat, gland, muscle) times Rayleigh speckle from a smoothed
complex field, depth attenuation and a random overall gain (so mean brightness says little about
the class), log-compressed to 8 bits. The lesion carries the textbook BI-RADS cues, so reading the
class takes shape and texture:

- benign: smooth oval, wider than tall, hypoechoic, homogeneous, posterior acoustic enhancement;
- malignant: irregular, spiculated margin, taller than wide, darker, heterogeneous with bright
  micro-calcifications, posterior acoustic shadowing;
- normal: no lesion.

Hypoechoic fat lobules (soft dark ovals) appear in every class, so "a dark blob" alone is no cue.

Burnt-in word (the background bias the paper found on BUSI), with r = ``text_label_correlation``:
each image independently, with probability r, gets its class's word (benign -> "BREAST",
malignant -> "AXILLA", normal -> no word); otherwise (probability 1 - r) a word drawn uniformly
from {none, "BREAST", "AXILLA"}. So P(word = class word) = r + (1 - r)/3: r = 1 makes the word a
perfect proxy of the label, r = 0 makes it independent of the label. The word is drawn in a 5x7
bitmap font scaled to 21 or 28 px tall, near the top of the square the efficientnet_lite0
transform keeps (shortest side to 256, centre crop 224), so a model with that crop sees all of it;
the lesion lies below it, also inside the kept square. Text boxes are ``x0, y0, x1, y1`` in image
pixels, end-exclusive (numpy/PIL box convention).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ...messages import progress_bar
from ...registry import get_model_entry
from ...validation import VlmprobeError
from .common import CROP_MODEL, MIN_PER_CLASS, kept_box, lesion_shape, smooth_noise, text_bitmap

BUSI_CLASSES = ("normal", "benign", "malignant")


BUSI_COUNTS = {"normal": 133, "benign": 437, "malignant": 210}


CLASS_WORD = {"normal": "", "benign": "BREAST", "malignant": "AXILLA"}


WORDS = ("", "BREAST", "AXILLA")


WIDTHS, HEIGHTS = (280, 330), (220, 260)  # inclusive ranges, around BUSI's typical ~300 x 240


TEXT_SCALES = (3, 4)  # bitmap font scale: words 21 or 28 px tall


CORRELATION_MODEL = (
    "Per image, independently: with probability r the word is the class's word (benign->BREAST, "
    "malignant->AXILLA, normal->none); otherwise it is drawn uniformly from "
    "{none, BREAST, AXILLA}. P(word = class word) = r + (1-r)/3.")


def class_counts(n: int, minimum: int = MIN_PER_CLASS) -> dict[str, int]:
    """BUSI's class proportions scaled to ``n``, at least ``minimum`` each."""
    if n < minimum * len(BUSI_CLASSES):
        raise VlmprobeError(f"n={n} is too small: a breastus phantom needs at least "
                            f"{minimum} images per class, n >= "
                            f"{minimum * len(BUSI_CLASSES)}.")
    total = sum(BUSI_COUNTS.values())
    normal, malignant = (max(minimum, round(n * BUSI_COUNTS[c] / total))
                         for c in ("normal", "malignant"))
    return {"normal": normal, "benign": n - normal - malignant, "malignant": malignant}


def sample_words(labels: list[str], r: float, rng: np.random.Generator) -> list[str]:
    """The burnt-in word per image under the correlation model of the module docstring."""
    keep = rng.random(len(labels)) < r
    other = rng.integers(0, len(WORDS), len(labels))
    return [CLASS_WORD[c] if k else WORDS[o] for c, k, o in zip(labels, keep, other)]


def _breastus_image(rng: np.random.Generator, label: str, word: str,
                    cfg) -> tuple[np.ndarray, np.ndarray, dict]:
    """One BUSI-like image (uint8), its lesion mask (bool) and its manifest fields."""
    w = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1))
    h = int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
    yy, xx = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    kx0, ky0, kx1, ky1 = kept_box(w, h, cfg)
    m = 6  # safety margin inside the kept square

    # Tissue layers with undulating boundaries (skin, fat, glandular tissue, pectoral muscle).
    und = smooth_noise(rng, 1, w, 24)
    skin = 6 + 2 * und
    fat = skin + rng.uniform(30, 60) + 8 * smooth_noise(rng, 1, w, 32)
    gland = fat + rng.uniform(80, 130) + 10 * und
    echo = np.select([yy < skin, yy < fat, yy < gland], [1.0, 0.35, 0.75], 0.5)
    echo *= np.exp(0.25 * smooth_noise(rng, h, w, 12))
    for _ in range(rng.integers(2, 6)):  # fat lobules: soft hypoechoic ovals in every class
        lx, ly, lr = rng.uniform(0, w), rng.uniform(15, h), rng.uniform(8, 22)
        echo *= 1 - 0.45 * np.exp(-(((xx - lx) / (1.8 * lr)) ** 2 + ((yy - ly) / lr) ** 2) ** 2)

    # Text box reserved near the top of the kept square whether or not a word is drawn, so the
    # lesion's position says nothing about the word.
    scale = int(rng.integers(TEXT_SCALES[0], TEXT_SCALES[1] + 1))
    tw, th = (6 * 6 - 1) * scale, 7 * scale
    tx0, ty0 = int(rng.integers(kx0 + m, kx1 - m - tw + 1)), ky0 + m + int(rng.integers(0, 6))
    top = ty0 + th + m

    mask = np.zeros((h, w), bool)
    fields = dict(lesion_cx="", lesion_cy="", lesion_rx="", lesion_ry="", lesion_shape="none")
    if label != "normal":
        if label == "benign":
            shape, rx = "oval", rng.uniform(22, 42)
            ry = rx * rng.uniform(0.5, 0.75)
        else:
            shape, ry = "irregular", rng.uniform(20, 36)
            rx = ry * rng.uniform(0.7, 0.95)
        pad = 8  # room for the blurred margin
        local, ox, oy = lesion_shape(rng, shape, rx, ry, pad)
        lh, lw = local.shape
        # Integer centre chosen so the whole lesion (spicules included) lies in the kept square.
        cx = int(rng.integers(kx0 + m + ox - pad, kx1 - m - lw + pad + ox + 1))
        cy = int(rng.integers(top + oy - pad, ky1 - m - lh + pad + oy + 1))
        win = (slice(cy - oy, cy - oy + lh), slice(cx - ox, cx - ox + lw))
        mask[win] = local
        soft = ndimage.gaussian_filter(local.astype(np.float64), 1.0 if shape == "oval" else 2.0)
        below = np.exp(-((xx - cx) / (0.8 * rx)) ** 4) * np.clip((yy - cy) / ry, 0, 1)
        if shape == "oval":  # homogeneous, posterior enhancement
            inside, calcifications = rng.uniform(0.3, 0.45), 0.0
            echo = echo * (1 + 0.35 * below)
        else:  # heterogeneous with bright micro-calcifications, posterior shadowing
            inside = rng.uniform(0.12, 0.25) * np.exp(0.5 * smooth_noise(rng, *local.shape, 3))
            specks = (rng.random(local.shape) < 0.004) & local
            calcifications = 2.5 * ndimage.maximum_filter(specks, 2)
            echo = echo * (1 - 0.55 * below)
        echo[win] = echo[win] * (1 - soft + soft * inside) + calcifications
        fields = dict(lesion_cx=cx, lesion_cy=cy, lesion_rx=f"{rx:.1f}", lesion_ry=f"{ry:.1f}",
                      lesion_shape=shape)

    # Speckle: the magnitude of a smoothed complex Gaussian field is Rayleigh, laterally elongated.
    z = ndimage.gaussian_filter(rng.standard_normal((2, h, w), dtype=np.float32), (0, 0.8, 1.6))
    speckle = np.hypot(z[0], z[1])
    attenuation = np.exp(-rng.uniform(0.5, 1.5) * yy / h)
    env = echo * speckle / speckle.mean() * attenuation * rng.uniform(0.6, 1.4)
    img = 255 * np.log1p(20 * env) / np.log1p(20 * 2.0)  # log compression, as B-mode displays

    fields.update(text_x0="", text_y0="", text_x1="", text_y1="")
    if word:
        img[ty0:ty0 + th, tx0:tx0 + tw][text_bitmap(word, scale)] = rng.uniform(225, 255)
        fields.update(text_x0=tx0, text_y0=ty0, text_x1=tx0 + tw, text_y1=ty0 + th)
    return np.clip(img, 0, 255).astype(np.uint8), mask, fields


def write_breastus(out: Path, n: int, seed: int, r: float, progress: bool, _size=None,
                   minimum: int = MIN_PER_CLASS) -> dict:
    """Write images, masks and ``manifest.csv``; return the facts ``phantom.json`` records.

    Words come from one stream (``[seed, 0]``), image k from its own (``[seed, 1, k]``), so a
    change in how images are drawn never reshuffles the words.
    """
    counts = class_counts(n, minimum)
    cfg = get_model_entry(CROP_MODEL).preprocess
    items = [(c, i) for c in BUSI_CLASSES for i in range(1, counts[c] + 1)]
    words = sample_words([c for c, _ in items], r, np.random.default_rng([seed, 0]))
    rows = []
    with progress_bar("phantom breastus", n, enabled=progress) as advance:
        for k, ((label, i), word) in enumerate(zip(items, words)):
            name = f"{label}/{label} ({i})"
            rng = np.random.default_rng([seed, 1, k])
            img, mask, fields = _breastus_image(rng, label, word, cfg)
            (out / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(out / f"{name}.png")
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(out / f"{name}_mask.png")
            rows.append({"path": f"{name}.png", "label": label, "word": word, **fields,
                         "mask_path": f"{name}_mask.png"})
            advance(1)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return {"class_counts": counts, "word_counts": {w or "none": words.count(w) for w in WORDS},
            "correlation_model": CORRELATION_MODEL, "class_words": CLASS_WORD,
            "image_width_range": WIDTHS, "image_height_range": HEIGHTS,
            "text_height_px": [7 * s for s in TEXT_SCALES],
            "text_box": "x0, y0, x1, y1 in image pixels, end-exclusive",
            "crop_model": CROP_MODEL, "crop_preprocess": cfg.to_dict()}
