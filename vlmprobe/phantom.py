"""Phantom datasets: seeded synthetic stand-ins in the real on-disk layout, with known truth.

No real medical image can be downloaded where the demo and the tests run, yet the probe, the UMAP
maps and RISE must be checked against something whose truth is known. A phantom is written in the
real dataset's layout (so the real loader reads it), plus ``manifest.csv`` (per-image truth: word,
text box, lesion geometry, mask) and ``phantom.json`` (generator, version, every parameter).

``breastus`` imitates BUSI (Al-Dhabyani et al. 2020): ``<out>/<class>/<class> (<i>).png`` for the
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
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from .geometry import input_geometry
from .progress import progress_bar
from .registry import get_model_entry
from .validation import VlmprobeError, unknown_key_error

GENERATOR_VERSION = "1"
#: The model whose centre crop the word and the lesion must survive.
CROP_MODEL = "efficientnet_lite0"

BUSI_CLASSES = ("normal", "benign", "malignant")
BUSI_COUNTS = {"normal": 133, "benign": 437, "malignant": 210}
CLASS_WORD = {"normal": "", "benign": "BREAST", "malignant": "AXILLA"}
WORDS = ("", "BREAST", "AXILLA")
MIN_PER_CLASS = 3
WIDTHS, HEIGHTS = (280, 330), (220, 260)  # inclusive ranges, around BUSI's typical ~300 x 240
TEXT_SCALES = (3, 4)  # bitmap font scale: words 21 or 28 px tall
CORRELATION_MODEL = (
    "Per image, independently: with probability r the word is the class's word (benign->BREAST, "
    "malignant->AXILLA, normal->none); otherwise it is drawn uniformly from "
    "{none, BREAST, AXILLA}. P(word = class word) = r + (1-r)/3.")

_GLYPHS = {  # 5x7 bitmap font: only the letters of the two words
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
}


def text_bitmap(word: str, scale: int) -> np.ndarray:
    """Boolean [7*scale, (6*len-1)*scale] rendering of ``word``: exact, whatever fonts exist."""
    cols = []
    for k, ch in enumerate(word):
        if k:
            cols.append(np.zeros((7, 1), bool))
        cols.append(np.array([[c == "#" for c in row] for row in _GLYPHS[ch]]))
    return np.kron(np.hstack(cols), np.ones((scale, scale), bool))


def class_counts(n: int) -> dict[str, int]:
    """BUSI's class proportions scaled to ``n``, at least :data:`MIN_PER_CLASS` each."""
    if n < MIN_PER_CLASS * len(BUSI_CLASSES):
        raise VlmprobeError(f"n={n} is too small: a breastus phantom needs at least "
                            f"{MIN_PER_CLASS} images per class, n >= "
                            f"{MIN_PER_CLASS * len(BUSI_CLASSES)}.")
    total = sum(BUSI_COUNTS.values())
    normal, malignant = (max(MIN_PER_CLASS, round(n * BUSI_COUNTS[c] / total))
                         for c in ("normal", "malignant"))
    return {"normal": normal, "benign": n - normal - malignant, "malignant": malignant}


def sample_words(labels: list[str], r: float, rng: np.random.Generator) -> list[str]:
    """The burnt-in word per image under the correlation model of the module docstring."""
    keep = rng.random(len(labels)) < r
    other = rng.integers(0, len(WORDS), len(labels))
    return [CLASS_WORD[c] if k else WORDS[o] for c, k, o in zip(labels, keep, other)]


def _smooth_noise(rng, h: int, w: int, step: int) -> np.ndarray:
    """Smooth random field, about unit sd, correlation length ~ ``step`` px.

    White noise on a grid ``step`` times coarser, upsampled bicubically: ten times faster than a
    wide Gaussian filter at full size, which matters at 600 images.
    """
    gh, gw = h // step + 4, w // step + 4
    coarse = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), "F")
    fine = np.asarray(coarse.resize((gw * step, gh * step), Image.BICUBIC))
    return fine[2 * step:2 * step + h, 2 * step:2 * step + w] / 0.77


def _kept_box(w: int, h: int, cfg) -> tuple[int, int, int, int]:
    """Box ``x0, y0, x1, y1`` (end-exclusive) of the original pixels the model input keeps."""
    seen = input_geometry(cfg, w, h).seen_mask()
    xs, ys = np.flatnonzero(seen.any(0)), np.flatnonzero(seen.any(1))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _lesion_shape(rng, shape: str, rx: float, ry: float, pad: int) -> tuple[np.ndarray, int, int]:
    """Boolean lesion region cropped to its bounding box plus ``pad`` px; its centre (x, y) there.

    An ellipse whose polar radius is modulated: one gentle wobble for a smooth oval; lobulation
    plus sharp spicules (never beyond twice the radius) for an irregular margin.
    """
    ax, ay = int(2 * rx) + pad, int(2 * ry) + pad
    y, x = np.mgrid[-ay:ay + 1, -ax:ax + 1].astype(np.float64)
    theta = np.arctan2(y, x)
    r_ell = 1.0 / np.hypot(np.cos(theta) / rx, np.sin(theta) / ry)
    if shape == "oval":
        mod = 0.04 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    else:
        mod = sum(rng.uniform(0.03, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                  for k in range(3, 8))
        spikes = rng.integers(9, 16)
        mod += 0.35 * (np.abs(np.cos(spikes / 2 * theta + rng.uniform(0, np.pi))) ** 12 - 0.2)
    region = np.hypot(x, y) <= r_ell * (1 + mod)
    ys, xs = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    y0, x0 = ys[0] - pad, xs[0] - pad
    return region[y0:ys[-1] + pad + 1, x0:xs[-1] + pad + 1], ax - x0, ay - y0


def _breastus_image(rng: np.random.Generator, label: str, word: str,
                    cfg) -> tuple[np.ndarray, np.ndarray, dict]:
    """One BUSI-like image (uint8), its lesion mask (bool) and its manifest fields."""
    w = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1))
    h = int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
    yy, xx = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    kx0, ky0, kx1, ky1 = _kept_box(w, h, cfg)
    m = 6  # safety margin inside the kept square

    # Tissue layers with undulating boundaries (skin, fat, glandular tissue, pectoral muscle).
    und = _smooth_noise(rng, 1, w, 24)
    skin = 6 + 2 * und
    fat = skin + rng.uniform(30, 60) + 8 * _smooth_noise(rng, 1, w, 32)
    gland = fat + rng.uniform(80, 130) + 10 * und
    echo = np.select([yy < skin, yy < fat, yy < gland], [1.0, 0.35, 0.75], 0.5)
    echo *= np.exp(0.25 * _smooth_noise(rng, h, w, 12))
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
        local, ox, oy = _lesion_shape(rng, shape, rx, ry, pad)
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
            inside = rng.uniform(0.12, 0.25) * np.exp(0.5 * _smooth_noise(rng, *local.shape, 3))
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


def _write_breastus(out: Path, n: int, seed: int, r: float, progress: bool) -> dict:
    """Write images, masks and ``manifest.csv``; return the facts ``phantom.json`` records.

    Words come from one stream (``[seed, 0]``), image k from its own (``[seed, 1, k]``), so a
    change in how images are drawn never reshuffles the words.
    """
    counts = class_counts(n)
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


#: dataset key -> writer(out, n, seed, r, progress) -> facts for phantom.json
GENERATORS: dict[str, Callable[..., dict]] = {"breastus": _write_breastus}


def make_phantom(dataset: str, out: Path, n: int = 600, seed: int = 0,
                 text_label_correlation: float = 0.8, progress: bool = True) -> Path:
    """Write the phantom of ``dataset`` into ``out`` (new or empty) and return ``out``."""
    if dataset not in GENERATORS:
        raise unknown_key_error("phantom dataset", dataset, GENERATORS)
    if not 0.0 <= text_label_correlation <= 1.0:
        raise VlmprobeError("text_label_correlation must lie in [0, 1], got "
                            f"{text_label_correlation}.")
    if seed < 0:
        raise VlmprobeError(f"seed must be a non-negative integer, got {seed}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VlmprobeError(f"{out} is not an empty directory; give a new or empty one for the "
                            "phantom.")
    # Written beside ``out`` and renamed into place: an interrupted run leaves no half dataset.
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    facts = GENERATORS[dataset](partial, n, seed, text_label_correlation, progress)
    meta = {"generator": f"vlmprobe.phantom.{dataset}", "version": GENERATOR_VERSION,
            "dataset": dataset,
            "parameters": {"n": n, "seed": seed, "text_label_correlation": text_label_correlation},
            **facts}
    (partial / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return out
