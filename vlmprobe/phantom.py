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
from collections import Counter
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


def _write_breastus(out: Path, n: int, seed: int, r: float, progress: bool, *_) -> dict:
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


def make_phantom(dataset: str, out: Path, n: int | None = None, seed: int = 0,
                 text_label_correlation: float = 0.8, progress: bool = True,
                 size: int = 28) -> Path:
    """Write the phantom of ``dataset`` into ``out`` (new or empty) and return ``out``.

    ``n`` defaults to 600 for breastus (the demo) and :data:`PHANTOM_N` for the others;
    ``text_label_correlation`` is the r of the burnt-in word (breastus) or of the site (others);
    ``size`` is the MedMNIST image size (pneumoniamnist).
    """
    if dataset not in GENERATORS:
        raise unknown_key_error("phantom dataset", dataset, GENERATORS)
    n = DEFAULT_N.get(dataset, PHANTOM_N) if n is None else n
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
    facts = GENERATORS[dataset](partial, n, seed, text_label_correlation, progress, size)
    meta = {"generator": f"vlmprobe.phantom.{dataset}", "version": GENERATOR_VERSION,
            "dataset": dataset,
            "parameters": {"n": n, "seed": seed, "text_label_correlation": text_label_correlation,
                           **({"size": size} if dataset == "pneumoniamnist" else {})},
            **facts}
    (partial / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return out


# -- the other seven datasets ------------------------------------------------------------------
# Each writes its real dataset's layout and formats, with a class signal drawn from textbook cues
# (listed per dataset below) and one shared nuisance: the acquisition site. Site "B" images carry
# a bright vertical stripe at the left of the kept crop (a device/border artefact) and, where the
# image is wide enough, the burnt-in text "SITE B"; site "A" images the text "SITE A" and no
# stripe. The site follows the label as the BUSI word does: with probability r the class's site
# (classes alternate A, B, A, ... in label order), otherwise A or B uniformly. Every image's truth
# (label, site, stripe box, signal parameters, patient) is in ``manifest.csv``, joined to the
# samples by the loader of any phantom root.
SITE_MODEL = ("Per image, independently: with probability r the site is the class's site "
              "(classes alternate A, B, A, ... in label order); otherwise A or B uniformly. "
              "Site B adds a bright vertical stripe at the left of the kept crop; images at least "
              "128 px wide also carry the text 'SITE A' or 'SITE B'.")
PHANTOM_MANIFEST = "manifest.csv"
_GLYPHS[" "] = (".....",) * 7


def proportional_counts(real: dict[str, int], n: int, minimum: int = MIN_PER_CLASS) -> dict[str, int]:
    """``real``'s proportions scaled to ``n`` images, at least ``minimum`` per non-empty class;
    classes the real set leaves empty (ISIC's UNK) stay empty."""
    used = {c: k for c, k in real.items() if k > 0}
    if n < minimum * len(used):
        raise VlmprobeError(f"n={n} is too small: this phantom needs at least {minimum} images "
                            f"for each of its {len(used)} classes, n >= {minimum * len(used)}.")
    total = sum(used.values())
    counts = {c: max(minimum, int(n * k / total)) for c, k in used.items()}
    largest = max(used, key=used.get)
    counts[largest] += n - sum(counts.values())
    if counts[largest] < minimum:
        raise VlmprobeError(f"n={n} is too small to keep this phantom's class proportions.")
    return {c: counts.get(c, 0) for c in real}


def _sites(n_classes: int, labels: list[int], r: float, rng) -> list[str]:
    keep = rng.random(len(labels)) < r
    other = rng.integers(0, 2, len(labels))
    return ["AB"[k % 2] if c else "AB"[o] for k, c, o in zip(labels, keep, other)]


def _gauss(h: int, w: int, cx: float, cy: float, rx: float, ry: float | None = None,
           power: float = 1.0) -> np.ndarray:
    """A soft blob: exp(-(d^2)^power), 1 at its centre; power > 1 gives a flat top, sharp edge."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / (ry or rx)) ** 2
    return np.exp(-(d2 ** power))


def _paint(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Blend ``colour`` (grey or RGB, 0..1) into ``img`` [h, w, 3] with weight ``alpha``."""
    img *= 1 - alpha[..., None]
    img += alpha[..., None] * np.asarray(colour, np.float32).reshape(1, 1, -1)


def _stamp(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, colour,
           strength: float = 0.9, power: float = 2.0) -> None:
    """:func:`_paint` of a small :func:`_gauss` blob, computed only in its window (fast)."""
    h, w = img.shape[:2]
    reach = 3 * max(rx, ry)
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    if x0 < x1 and y0 < y1:
        _paint(img[y0:y1, x0:x1], strength * _gauss(y1 - y0, x1 - x0, cx - x0, cy - y0, rx, ry,
                                                    power), colour)


def _line(img, x: float, y: float, angle: float, length: float, width: float, colour,
          strength: float = 0.8) -> None:
    for t in np.linspace(-length / 2, length / 2, max(2, int(length / width))):
        _stamp(img, x + t * np.cos(angle), y + t * np.sin(angle), width, width, colour,
               strength, 1.0)


def _dots(rng, img, n: int, r: tuple[float, float], colour, box=None, power: float = 2.0) -> None:
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box or (0, 0, w, h)
    for _ in range(int(n)):
        rr = rng.uniform(*r)
        _stamp(img, rng.uniform(x0, x1), rng.uniform(y0, y1), rr, rr * rng.uniform(0.7, 1.3),
               colour, 0.9, power)


def _mark_site(img: np.ndarray, site: str, cfg) -> dict:
    """Stripe (site B) and text (both sites, if wide enough) inside the kept crop; their boxes."""
    h, w = img.shape[:2]
    kx0, ky0, kx1, ky1 = _kept_box(w, h, cfg)
    m = max(1, w // 64)
    fields = {"site": site, "stripe_x0": "", "stripe_x1": "", "text_x0": "", "text_y0": "",
              "text_x1": "", "text_y1": ""}
    sw = max(2, w // 32)
    if site == "B":
        img[ky0:ky1, kx0 + m:kx0 + m + sw] = 1.0
        fields.update(stripe_x0=kx0 + m, stripe_x1=kx0 + m + sw)
    if w >= 128:
        scale = max(1, w // 160)
        bitmap = text_bitmap(f"SITE {site}", scale)
        tx, ty = kx0 + 2 * m + sw, ky0 + 2 * m
        img[ty:ty + bitmap.shape[0], tx:tx + bitmap.shape[1]][bitmap] = 1.0
        fields.update(text_x0=tx, text_y0=ty, text_x1=tx + bitmap.shape[1],
                      text_y1=ty + bitmap.shape[0])
    return fields


def _speckle(rng, h: int, w: int, sd: float, step: int = 3) -> np.ndarray:
    return (sd * _smooth_noise(rng, h, w, step)).astype(np.float32)[..., None]


# Signal generators: (rng, class index, width, height) -> (float RGB [h, w, 3] in 0..1, fields).
def _draw_brainmr(rng, k, w, h):
    """MRI slice: skull ring, brain; glioma = large ring-enhancing irregular mass with a dark
    necrotic core; meningioma = bright homogeneous mass against the skull; pituitary = small
    bright mass at the skull base midline; no tumour = none."""
    img = np.zeros((h, w, 3), np.float32)
    cx, cy = w / 2 + rng.uniform(-8, 8), h / 2 + rng.uniform(-8, 8)
    rx, ry = w * rng.uniform(0.33, 0.38), h * rng.uniform(0.40, 0.44)
    _paint(img, _gauss(h, w, cx, cy, rx * 1.08, ry * 1.08, 6), 0.85)  # skull
    _paint(img, _gauss(h, w, cx, cy, rx, ry, 6), 0.42)
    img += _speckle(rng, h, w, 0.05, 6) * (img > 0.1)
    name = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")[k]
    if name == "glioma_tumor":
        lx, ly, lr = cx + rng.uniform(-0.4, 0.4) * rx, cy + rng.uniform(-0.4, 0.2) * ry, w * 0.11
        _paint(img, _gauss(h, w, lx, ly, lr, lr * 0.85, 3), 0.9)
        _paint(img, _gauss(h, w, lx, ly, lr * 0.6, lr * 0.5, 3), 0.12)
    elif name == "meningioma_tumor":
        a = rng.uniform(0, 2 * np.pi)
        lx, ly, lr = cx + 0.78 * rx * np.cos(a), cy + 0.78 * ry * np.sin(a), w * 0.08
        _paint(img, _gauss(h, w, lx, ly, lr, lr, 4), 0.97)
    elif name == "pituitary_tumor":
        lx, ly, lr = cx, cy + 0.55 * ry, w * 0.045
        _paint(img, _gauss(h, w, lx, ly, lr, lr, 4), 0.95)
    else:
        lx = ly = lr = ""
    return img, {"lesion_cx": lx if lx == "" else round(lx), "lesion_cy": ly if ly == "" else
                 round(ly), "lesion_r": lr if lr == "" else round(lr, 1)}


def _draw_chest_ct(rng, k, w, h, base_seed=None):
    """CT slice (lung window): body, two dark lungs with vessels; COVID = peripheral
    ground-glass opacities (hazy, brighter patches) in the lungs."""
    prng = np.random.default_rng(base_seed) if base_seed is not None else rng
    img = np.zeros((h, w, 3), np.float32)
    cx, cy = w / 2 + prng.uniform(-20, 20) * w / 256, h / 2 + prng.uniform(-16, 16) * h / 256
    body = _gauss(h, w, cx, cy, w * prng.uniform(0.36, 0.46), h * prng.uniform(0.26, 0.36), 5)
    _paint(img, body, 0.55)
    img += (0.12 * _smooth_noise(prng, h, w, max(4, w // 6)) * body)[..., None]  # this patient's
    lungs = []
    for side in (-1, 1):
        lx, ly = cx + side * w * prng.uniform(0.15, 0.22), cy + prng.uniform(-0.06, 0.04) * h
        lungs.append((lx, ly))
        _paint(img, _gauss(h, w, lx, ly, w * prng.uniform(0.11, 0.16), h * prng.uniform(0.18, 0.26),
                           4), 0.06)
    n_ggo = int(prng.integers(3, 7)) if k == 0 else 0
    for _ in range(n_ggo):
        lx, ly = lungs[prng.integers(0, 2)]
        ox = prng.choice([-1, 1]) * prng.uniform(0.05, 0.11) * w
        _paint(img, 0.85 * _gauss(h, w, lx + ox, ly + prng.uniform(-0.18, 0.18) * h,
                                  prng.uniform(12, 20) * w / 256), 0.42)
    for lx, ly in lungs:  # vessels: small bright dots
        _dots(prng, img, 10, (1.0, 2.0), 0.5, (lx - 0.1 * w, ly - 0.2 * h, lx + 0.1 * w, ly + 0.2 * h))
    img += _speckle(rng, h, w, 0.015, 2)
    return img, {"n_opacities": n_ggo}


def _draw_chest_xray(rng, k, w, h):
    """Frontal chest X-ray: bright thorax, two dark lung fields, heart shadow; pneumonia = dense
    bright consolidation patches in the lung fields."""
    img = np.full((h, w, 3), 0.25, np.float32)
    _paint(img, _gauss(h, w, w / 2, h * 0.55, w * 0.45, h * 0.5, 3), 0.7)
    lungs = [(w / 2 + s * w * 0.2 + rng.uniform(-1, 1) * w / 40, h * 0.5) for s in (-1, 1)]
    for lx, ly in lungs:
        _paint(img, _gauss(h, w, lx, ly, w * 0.15, h * 0.3, 3), 0.18)
    _paint(img, _gauss(h, w, w * 0.55, h * 0.62, w * 0.12, h * 0.14, 2), 0.6)  # heart
    n = int(rng.integers(2, 4)) if k == 1 else 0
    for _ in range(n):
        lx, ly = lungs[rng.integers(0, 2)]
        _paint(img, 0.85 * _gauss(h, w, lx + rng.uniform(-0.06, 0.06) * w,
                                  ly + rng.uniform(-0.18, 0.22) * h, w * rng.uniform(0.06, 0.1)), 0.75)
    img += _speckle(rng, h, w, 0.03, max(1, w // 28))
    return img, {"n_consolidations": n}


def _draw_breakhis(rng, k, w, h, tint=(1.0, 1.0, 1.0), mag=40):
    """H&E histology: pink stroma, purple nuclei; malignant = dense, large, pleomorphic,
    hyperchromatic nuclei; benign = sparse, small, regular ones. Magnification scales nuclei."""
    zoom = {40: 1.0, 100: 1.3, 200: 1.6, 400: 2.0}[mag]
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([0.94, 0.76, 0.86], np.float32) * np.asarray(tint, np.float32)
    img += _speckle(rng, h, w, 0.04, 8)
    if k == 0:
        n, r, colour = 45 / zoom, (2.5 * zoom, 3.5 * zoom), (0.45, 0.3, 0.65)
    else:
        n, r, colour = 140 / zoom, (3.5 * zoom, 7.5 * zoom), (0.25, 0.1, 0.42)
    _dots(rng, img, n, r, np.asarray(colour) * np.asarray(tint), power=1.5 if k else 3)
    return img, {"n_nuclei": int(n), "nucleus_r_range": f"{r[0]:.1f}-{r[1]:.1f}"}


#: Stand-in hierarchy for the HiCervix phantom (the real one has 29 level-3 classes, read from
#: its CSV): level_1 / level_2 / level_3, with the cue each level-3 class is drawn with.
HICERVIX_TREE = (
    ("Normal", "NILM", "NILM"), ("Squamous", "ASC", "ASC-US"), ("Squamous", "ASC", "ASC-H"),
    ("Squamous", "SIL", "LSIL"), ("Squamous", "SIL", "HSIL"), ("Squamous", "SCC", "SCC"),
    ("Glandular", "AGC", "AGC"), ("Microbe", "Fungus", "Candida"),
    ("Microbe", "Protozoa", "Trichomonas"), ("Microbe", "Bacteria", "Actinomyces"))
_CELL = {  # level-3 class -> nucleus radius, nucleus darkness, cytoplasm elongation, halo
    "NILM": (3, 0.5, 1.0, 0), "ASC-US": (5, 0.6, 1.0, 0), "ASC-H": (7, 0.7, 0.8, 0),
    "LSIL": (6, 0.65, 1.0, 1), "HSIL": (8, 0.85, 0.7, 0), "SCC": (10, 0.95, 0.6, 0),
    "AGC": (6, 0.7, 2.2, 0), "Candida": (3, 0.5, 1.0, 0), "Trichomonas": (3, 0.5, 1.0, 0),
    "Actinomyces": (3, 0.5, 1.0, 0)}


def _draw_hicervix(rng, k, w, h):
    """Pap smear cell: cytoplasm with a nucleus whose size, darkness and shape follow the
    Bethesda grade (koilocytic halo for LSIL, columnar cells for AGC); microbes drawn over
    normal cells (Candida hyphae, Trichomonas bodies, Actinomyces tangles)."""
    name = HICERVIX_TREE[k][2]
    nr, dark, elong, halo = _CELL[name]
    s = w / 128
    img = np.empty((h, w, 3), np.float32)
    img[:] = (0.88, 0.9, 0.93)
    img += _speckle(rng, h, w, 0.02, 6)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.7) * h
        ry = rng.uniform(16, 22) * s
        _paint(img, 0.8 * _gauss(h, w, cx, cy, ry * elong, ry, 3), (0.55, 0.78, 0.82))
        if halo:
            _paint(img, _gauss(h, w, cx, cy, nr * 2.2 * s, nr * 2.0 * s, 3), (0.93, 0.95, 0.96))
        _paint(img, _gauss(h, w, cx, cy, nr * s, nr * s * rng.uniform(0.8, 1.0), 3),
               np.array([0.5, 0.35, 0.7]) * (1.3 - dark))
    if name == "Candida":
        for _ in range(3):
            _line(img, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, np.pi), 60 * s,
                  1.5 * s, (0.8, 0.3, 0.5))
    elif name == "Trichomonas":
        _dots(rng, img, 6, (3 * s, 5 * s), (0.55, 0.65, 0.5))
    elif name == "Actinomyces":
        _dots(rng, img, 1, (14 * s, 18 * s), (0.3, 0.2, 0.45), (0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h), 0.8)
    return img, {"level_3_cue": name}


def _draw_fundus(rng, k, w, h, eye="l"):
    """Fundus photograph: orange disc, optic disc, vessels; DR grade g adds microaneurysms and
    haemorrhages (grade >= 1), hard exudates (>= 2), large blot haemorrhages (>= 3) and
    neovascular tufts (4)."""
    img = np.zeros((h, w, 3), np.float32)
    cx, cy, r = w / 2, h / 2, 0.46 * min(w, h)
    _paint(img, _gauss(h, w, cx, cy, r, r, 12), (0.85, 0.42, 0.2))
    img *= (0.75 + 0.25 * _gauss(h, w, cx, cy, r * 0.8))[..., None]
    ox = cx + (-1 if eye == "l" else 1) * 0.35 * r
    _paint(img, _gauss(h, w, ox, cy, 0.12 * r, 0.13 * r, 3), (0.98, 0.9, 0.6))
    for a in np.linspace(0, 2 * np.pi, 6, endpoint=False) + rng.uniform(0, 1):
        _line(img, ox + 0.47 * r * np.cos(a), cy + 0.47 * r * np.sin(a), a, 0.65 * r,
              0.015 * r, (0.55, 0.1, 0.08), 0.7)
    box = (cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r)
    n_red, n_ex, n_blot = (0, 4, 12, 22, 30)[k], (0, 0, 6, 12, 18)[k], (0, 0, 0, 3, 5)[k]
    _dots(rng, img, n_red, (0.012 * r, 0.025 * r), (0.45, 0.02, 0.02), box)
    _dots(rng, img, n_ex, (0.015 * r, 0.03 * r), (1.0, 0.95, 0.45), box)
    _dots(rng, img, n_blot, (0.05 * r, 0.08 * r), (0.35, 0.02, 0.02), box, 1.2)
    if k == 4:
        _dots(rng, img, 4, (0.03 * r, 0.04 * r), (0.7, 0.05, 0.1), box, 0.7)
    img += _speckle(rng, h, w, 0.015, 4) * (img.sum(-1, keepdims=True) > 0.1)
    return img, {"n_microaneurysms": n_red, "n_exudates": n_ex, "n_blots": n_blot}


_ISIC_LOOK = {  # class -> lesion colour, radius (fraction of width), irregularity, extra cue
    "MEL": ((0.2, 0.1, 0.08), 0.3, 1, "blue-white veil"), "NV": ((0.45, 0.28, 0.18), 0.18, 0, ""),
    "BCC": ((0.85, 0.6, 0.62), 0.2, 0, "arborizing vessels"), "AK": ((0.8, 0.45, 0.4), 0.24, 1, "scale"),
    "BKL": ((0.6, 0.45, 0.3), 0.22, 0, "waxy texture"), "DF": ((0.55, 0.35, 0.25), 0.12, 0, "white centre"),
    "VASC": ((0.6, 0.08, 0.25), 0.15, 0, "lacunae"), "SCC": ((0.85, 0.4, 0.4), 0.2, 1, "keratin centre"),
}


def _draw_isic(rng, k, w, h):
    """Dermoscopy: skin, lesion whose colour, size and border follow the class, plus each
    class's textbook structure (veil, vessels, scale, lacunae, white or keratin centre)."""
    name = list(_ISIC_LOOK)[k]
    colour, rad, irregular, cue = _ISIC_LOOK[name]
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([0.93, 0.75, 0.64]) * rng.uniform(0.85, 1.05)
    img += _speckle(rng, h, w, 0.02, 8)
    cx, cy, r = w / 2 + rng.uniform(-10, 10), h / 2 + rng.uniform(-10, 10), rad * w
    if irregular:
        shape, ox, oy = _lesion_shape(rng, "spiculated", r * 0.8, r * 0.7, 2)
        alpha = np.zeros((h, w), np.float32)
        y0, x0 = int(cy - oy), int(cx - ox)
        ys, xs = np.nonzero(shape)
        ok = (ys + y0 >= 0) & (ys + y0 < h) & (xs + x0 >= 0) & (xs + x0 < w)
        alpha[ys[ok] + y0, xs[ok] + x0] = 0.95
        alpha = ndimage.gaussian_filter(alpha, 2)
    else:
        alpha = 0.95 * _gauss(h, w, cx, cy, r, r * rng.uniform(0.8, 1.0), 3)
    _paint(img, alpha, colour)
    inner = (cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r)
    if name == "MEL":
        _paint(img, 0.6 * _gauss(h, w, cx, cy, 0.4 * r), (0.45, 0.55, 0.7))
    elif name == "BCC":
        for _ in range(5):
            _line(img, rng.uniform(inner[0], inner[2]), rng.uniform(inner[1], inner[3]),
                  rng.uniform(0, np.pi), 0.6 * r, 1.2, (0.75, 0.1, 0.1))
    elif name in ("AK", "BKL"):
        _dots(rng, img, 25, (1.5, 3.5), (0.95, 0.92, 0.85) if name == "AK" else (0.4, 0.3, 0.2), inner)
    elif name in ("DF", "SCC"):
        _paint(img, _gauss(h, w, cx, cy, 0.35 * r, 0.35 * r, 3),
               (0.97, 0.96, 0.94) if name == "DF" else (0.95, 0.9, 0.6))
    elif name == "VASC":
        _dots(rng, img, 12, (0.08 * r, 0.14 * r), (0.45, 0.0, 0.15), inner, 3)
    return img, {"lesion_r": round(r, 1), "cue": cue}


def _render(draw, labels: list[int], n_classes: int, size: tuple[int, int], seed: int, r: float,
            name: str, progress: bool, per_item=None, colour: bool = True,
            repeats: dict[int, int] | None = None,
            site_of: dict[int, int] | None = None) -> list[tuple]:
    """(uint8 image, truth fields) per label: sites from stream ``[seed, 0]``, image k from
    ``[seed, 1, k]``; ``per_item(k)`` gives extra keyword arguments for ``draw``. Image k of
    ``repeats`` {k: j} is another exposure of image j (same scene and site, 3-8% darker);
    image k of ``site_of`` {k: j} has image j's site (one scanner per patient)."""
    cfg = get_model_entry(CROP_MODEL).preprocess
    sites = _sites(n_classes, labels, r, np.random.default_rng([seed, 0]))
    repeats = repeats or {}
    out = []
    with progress_bar(f"phantom {name}", len(labels), enabled=progress) as advance:
        for k, label in enumerate(labels):
            j = repeats.get(k, k)
            site = sites[(site_of or {}).get(j, j)]
            rng = np.random.default_rng([seed, 1, k])
            img, fields = draw(np.random.default_rng([seed, 1, j]), label, *size,
                               **(per_item(j) if per_item else {}))
            if j != k:
                img *= rng.uniform(0.92, 0.97)
            fields = {**fields, **_mark_site(img, site, cfg)}
            a = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
            out.append((a if colour else a[..., 0], fields))
            advance(1)
    return out


def _write_manifest(out: Path, rows: list[dict], name: str = PHANTOM_MANIFEST) -> None:
    with open(out / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _labels(counts: dict[str, int], classes: list[str]) -> list[int]:
    return [k for k, c in enumerate(classes) for _ in range(counts[c])]


def _facts(counts, rows, draw, extra=None) -> dict:
    return {"class_counts": counts, "site_counts": dict(sorted(
                {s: sum(r["site"] == s for r in rows) for s in "AB"}.items())),
            "site_model": SITE_MODEL, "signal": " ".join((draw.__doc__ or "").split()),
            "crop_model": CROP_MODEL, **(extra or {})}


def _expected(name: str) -> dict[str, int]:
    from .datasets import get_dataset_entry

    return get_dataset_entry(name).expected_counts


def _save(out: Path, rel: str, a: np.ndarray) -> None:
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(out / rel, **({"quality": 92} if rel.endswith(".jpg") else {}))


def _write_folder(name, draw, size, colour, filename):
    """Writer for ImageFolder datasets: ``<class>/<filename(class, i)>``."""
    def write(out: Path, n: int, seed: int, r: float, progress: bool, *_) -> dict:
        counts = proportional_counts(_expected(name), n)
        classes = list(counts)
        labels = _labels(counts, classes)
        items = _render(draw, labels, len(classes), size, seed, r, name, progress, colour=colour)
        rows, seen = [], Counter()
        for label, (a, fields) in zip(labels, items):
            c = classes[label]
            seen[c] += 1
            rel = f"{c}/{filename(c, seen[c])}"
            _save(out, rel, a)
            rows.append({"path": rel, "label": c, **fields})
        _write_manifest(out, rows)
        return _facts(counts, rows, draw)
    return write


def _write_sarscov2ct(out, n, seed, r, progress, *_):
    """Several slices per patient (same anatomy, opacities and scanner site, new noise): near
    duplicates that an ungrouped split scatters over train and test. Patients are in the
    manifest only, as the real set ships none."""
    counts = proportional_counts(_expected("sarscov2ct"), n)
    classes = list(counts)
    labels = _labels(counts, classes)
    patient, per = [], 4
    for c in range(len(classes)):
        m = labels.count(c)
        patient += [f"{classes[c]}-p{i // per}" for i in range(m)]
    ids = {p: i for i, p in enumerate(dict.fromkeys(patient))}
    first = {p: patient.index(p) for p in ids}
    items = _render(_draw_chest_ct, labels, 2, (256, 256), seed, r, "sarscov2ct", progress,
                    per_item=lambda k: {"base_seed": [seed, 2, ids[patient[k]]]}, colour=False,
                    site_of={k: first[p] for k, p in enumerate(patient)})
    rows, seen = [], Counter()
    for label, p, (a, fields) in zip(labels, patient, items):
        c = classes[label]
        seen[c] += 1
        rel = f"{c}/{'Covid' if c == 'COVID' else 'Non-Covid'} ({seen[c]}).png"
        _save(out, rel, a)
        rows.append({"path": rel, "label": c, "patient": p, **fields})
    _write_manifest(out, rows)
    return _facts(counts, rows, _draw_chest_ct, {"slices_per_patient": per})


def _write_pneumoniamnist(out, n, seed, r, progress, size=28):
    """MedMNIST release file: train (the paper's subset, ``n`` images), val and test splits."""
    from .datasets import MEDMNIST_SIZES

    if size not in MEDMNIST_SIZES:
        raise VlmprobeError(f"size {size} is not a MedMNIST size; choose one of {MEDMNIST_SIZES}.")
    real = _expected("pneumoniamnist")
    file = "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"
    parts = {"train": proportional_counts(real, n)}
    parts["val"] = parts["test"] = proportional_counts(real, max(6, n // 8), 3)
    arrays, rows, counts = {}, [], {}
    for i, (split, c) in enumerate(parts.items()):
        labels = _labels(c, list(real))
        items = _render(_draw_chest_xray, labels, 2, (size, size), seed + 7919 * i, r,
                        f"pneumoniamnist {split}", progress, colour=False)
        arrays[f"{split}_images"] = np.stack([a for a, _ in items])
        arrays[f"{split}_labels"] = np.array(labels, np.uint8).reshape(-1, 1)
        rows += [{"path": f"{file}#{split}_images/{k}", "label": list(real)[y], **f}
                 for k, (y, (_, f)) in enumerate(zip(labels, items))]
        counts[split] = c
    np.savez_compressed(out / file, **arrays)
    _write_manifest(out, rows)
    return _facts(counts["train"], rows, _draw_chest_xray, {"size": size, "split_counts": counts})


_BREAKHIS_SUBTYPES = {"benign": (("adenosis", "A"), ("fibroadenoma", "F"),
                                 ("phyllodes_tumor", "PT"), ("tubular_adenoma", "TA")),
                      "malignant": (("ductal_carcinoma", "DC"), ("lobular_carcinoma", "LC"),
                                    ("mucinous_carcinoma", "MC"), ("papillary_carcinoma", "PC"))}


def _write_breakhis(out, n, seed, r, progress, *_):
    """Patients with several images at four magnifications and a patient-specific stain tint:
    a probe can learn the patient, so an ungrouped split overstates it."""
    counts = proportional_counts(_expected("breakhis"), n)
    classes = list(counts)
    labels = _labels(counts, classes)
    info = []  # (class, patient id, subtype, code, magnification, tint)
    prng = np.random.default_rng([seed, 3])
    for c in classes:
        m = counts[c]
        n_pat = max(2, m // 6)
        tints = [tuple(prng.uniform(0.85, 1.1, 3)) for _ in range(n_pat)]
        for i in range(m):
            p = i % n_pat
            sub, code = _BREAKHIS_SUBTYPES[c][p % 4]
            info.append((c, f"14-{10000 + 97 * p + (c == 'malignant')}", sub, code,
                         (40, 100, 200, 400)[(i // n_pat) % 4], tints[p]))
    items = _render(_draw_breakhis, labels, 2, (350, 230), seed, r, "breakhis", progress,
                    per_item=lambda k: {"tint": info[k][5], "mag": info[k][4]})
    rows, seq = [], Counter()
    for (c, pid, sub, code, mag, _), (a, fields) in zip(info, items):
        t = "B" if c == "benign" else "M"
        seq[(pid, mag)] += 1
        rel = (f"{c}/SOB/{sub}/SOB_{t}_{code}_{pid}/{mag}X/"
               f"SOB_{t}_{code}-{pid}-{mag}-{seq[(pid, mag)]:03d}.png")
        _save(out, rel, a)
        rows.append({"path": rel, "label": c, "patient": pid, "magnification": mag, **fields})
    _write_manifest(out, rows)
    return _facts(counts, rows, _draw_breakhis,
                  {"patients": len({r_["patient"] for r_ in rows})})


def _write_hicervix(out, n, seed, r, progress, *_):
    """``train.csv`` (image_name, level_1, level_2, level_3) and ``train/*.jpg``, over a
    stand-in 3-level hierarchy (:data:`HICERVIX_TREE`), classes equally frequent."""
    names = [t[2] for t in HICERVIX_TREE]
    counts = proportional_counts(dict.fromkeys(names, 1), n)
    labels = _labels(counts, names)
    items = _render(_draw_hicervix, labels, len(names), (128, 128), seed, r, "hicervix", progress)
    rows, gt = [], []
    for k, (label, (a, fields)) in enumerate(zip(labels, items)):
        file = f"HC_{k:05d}.jpg"
        _save(out, f"train/{file}", a)
        gt.append(dict(zip(("image_name", "level_1", "level_2", "level_3"), (file, *HICERVIX_TREE[label]))))
        rows.append({"path": f"train/{file}", "label": names[label], **fields})
    _write_manifest(out, gt, "train.csv")
    _write_manifest(out, rows)
    return _facts(counts, rows, _draw_hicervix, {"hierarchy": [list(t) for t in HICERVIX_TREE]})


def _write_deepdrid(out, n, seed, r, progress, *_):
    """Regular-fundus training CSV and ``Images/<patient>/<patient>_<l|r><1|2>.jpg``: two images
    per eye, one grade per patient (``patient_DR_Level``), grades equally frequent."""
    grades = ["0", "1", "2", "3", "4"]
    counts = proportional_counts(dict.fromkeys(grades, 1), n, 4)
    labels = _labels(counts, grades)
    ids, pid, last = [], 0, None
    for i, g in enumerate(labels):
        seen = sum(1 for x in labels[:i] if x == g)
        if seen % 4 == 0:
            pid += 1
        ids.append((pid, "lr"[(seen // 2) % 2], seen % 2 + 1))
    items = _render(_draw_fundus, labels, 5, (320, 320), seed, r, "deepdrid", progress,
                    per_item=lambda k: {"eye": ids[k][1]})
    base = "regular_fundus_images/regular-fundus-training"
    rows, gt = [], []
    for g, (p, eye, j), (a, fields) in zip(labels, ids, items):
        image_id = f"{p}_{eye}{j}"
        rel = f"{base}/Images/{p}/{image_id}.jpg"
        _save(out, rel, a)
        gt.append({"patient_id": p, "image_id": image_id,
                   "image_path": f"\\regular_fundus_images\\regular-fundus-training\\Images\\{p}\\{image_id}.jpg",
                   "left_eye_DR_Level": g if eye == "l" else "",
                   "right_eye_DR_Level": g if eye == "r" else "", "patient_DR_Level": g,
                   "Overall quality": 1})
        rows.append({"path": rel, "label": str(g), "patient": p, **fields})
    _write_manifest(out / base, gt, "regular-fundus-training.csv")
    _write_manifest(out, rows)
    return _facts(counts, rows, _draw_fundus)


def _write_isic2019(out, n, seed, r, progress, *_):
    """Ground-truth CSV (one-hot, UNK column empty), ``ISIC_2019_Training_Input/*.jpg`` and the
    metadata CSV (age_approx, anatom_site_general, lesion_id, sex); age follows the class (known
    metadata signal); every fourth image is a second exposure of the previous lesion (same
    lesion_id: a near duplicate that an ungrouped split may put on both sides)."""
    real = _expected("isic2019")
    counts = proportional_counts(real, n)
    classes = list(real)
    labels = _labels(counts, classes)
    repeats = {k: k - 1 for k in range(1, len(labels)) if k % 4 == 1 and labels[k - 1] == labels[k]}
    items = _render(_draw_isic, labels, len(classes), (256, 256), seed, r, "isic2019", progress,
                    repeats=repeats)
    prng = np.random.default_rng([seed, 4])
    mean_age = {"MEL": 60, "NV": 40, "BCC": 70, "AK": 70, "BKL": 60, "DF": 45, "VASC": 50, "SCC": 70}
    gt, meta, rows, lesion = [], [], [], 0
    for k, (label, (a, fields)) in enumerate(zip(labels, items)):
        c, image = classes[label], f"ISIC_{k:07d}"
        lesion += k not in repeats
        rel = f"ISIC_2019_Training_Input/{image}.jpg"
        _save(out, rel, a)
        gt.append({"image": image, **{x: "1.0" if x == c else "0.0" for x in classes}})
        meta.append({"image": image, "age_approx": int(5 * round((mean_age[c] + prng.normal(0, 8)) / 5)),
                     "anatom_site_general": prng.choice(["anterior torso", "head/neck",
                                                         "lower extremity", "upper extremity"]),
                     "lesion_id": f"BCN_{lesion:07d}", "sex": prng.choice(["male", "female"])})
        rows.append({"path": rel, "label": c, "second_view_of":
                     f"ISIC_{repeats[k]:07d}" if k in repeats else "", **fields})
    _write_manifest(out, gt, "ISIC_2019_Training_GroundTruth.csv")
    _write_manifest(out, meta, "ISIC_2019_Training_Metadata.csv")
    _write_manifest(out, rows)
    return _facts(counts, rows, _draw_isic, {"mean_age_by_class": mean_age})


GENERATORS.update({
    "brainmr": _write_folder("brainmr", _draw_brainmr, (256, 256), False,
                             lambda c, i: f"image({i}).jpg"),
    "sarscov2ct": _write_sarscov2ct,
    "pneumoniamnist": _write_pneumoniamnist,
    "breakhis": _write_breakhis,
    "hicervix": _write_hicervix,
    "deepdrid": _write_deepdrid,
    "isic2019": _write_isic2019,
})
DEFAULT_N = {"breastus": 600}  # others: PHANTOM_N, small and fast
PHANTOM_N = 120


# -- ctdicom: a DICOM phantom whose class shows only inside a stated window -----------------------
#: The soft-tissue window the lesion is visible in (Hounsfield units); written as window tags.
CT_WINDOW = (50.0, 100.0)
CT_LESION_HU = 20.0  # lesion contrast over liver: 51 grey levels in the window, ~3 in min-max
CT_VARIANTS = ("12-bit unsigned, intercept -1024", "16-bit signed", "12-bit MONOCHROME1",
               "16-bit signed, RLE Lossless")


def _ct_hu(rng, lesion: bool, side: int) -> tuple[np.ndarray, dict]:
    """An abdominal CT slice in HU: air, fat-rimmed body, liver, spine; a faint liver lesion."""
    h = w = side
    hu = np.full((h, w), -1000.0)
    cx, cy = w / 2 + rng.uniform(-4, 4), h / 2 + rng.uniform(-3, 3)
    body = _gauss(h, w, cx, cy, w * rng.uniform(0.40, 0.45), h * rng.uniform(0.32, 0.37), 6)
    hu = hu * (1 - body) + (-90.0) * body  # fat
    soft = _gauss(h, w, cx, cy, w * 0.36, h * 0.29, 6)
    hu = hu * (1 - soft) + 40.0 * soft
    lx, ly = cx - w * 0.12, cy - h * 0.04
    liver = _gauss(h, w, lx, ly, w * 0.17, h * 0.17, 4)
    hu = hu * (1 - liver) + 55.0 * liver
    spine = _gauss(h, w, cx, cy + h * 0.22, w * 0.05, h * 0.05, 4)
    hu = hu * (1 - spine) + 700.0 * spine
    hu += 9.0 * _smooth_noise(rng, h, w, 2) * body
    fields = {"lesion_cx": "", "lesion_cy": "", "lesion_r": ""}
    if lesion:
        r = rng.uniform(0.07, 0.1) * w
        ex, ey = lx + rng.uniform(-0.06, 0.06) * w, ly + rng.uniform(-0.06, 0.06) * h
        hu += CT_LESION_HU * _gauss(h, w, ex, ey, r, r, 3)
        fields = {"lesion_cx": round(ex, 1), "lesion_cy": round(ey, 1), "lesion_r": round(r, 1)}
    return hu, fields


def _ct_dicom(hu: np.ndarray, variant: int, path: Path) -> None:
    """Write ``hu`` as a single-frame CT DICOM in one of :data:`CT_VARIANTS`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(
        entropy_srcs=[path.name])  # reproducible
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CT", *hu.shape, 1
    ds.BitsAllocated = 16
    centre, width = CT_WINDOW
    if variant in (0, 2):  # 12-bit unsigned: stored = HU + 1024
        stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        if variant == 2:  # MONOCHROME1: stored inverted; displayed the same after inversion
            stored = (4095 - stored).astype(np.uint16)
            centre = 2048 - centre  # values are 2047 - HU: the same window, mirrored (DICOM linear)
    else:  # 16-bit signed HU
        stored = np.round(hu).astype(np.int16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if variant == 2 else "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = centre, width
    ds.PixelData = stored.tobytes()
    if variant == 3:
        ds.compress(RLELossless, stored)
    ds.save_as(path, enforce_file_format=True)


def _write_ctdicom(out, n, seed, r, progress, *_):
    """CT DICOMs in ``<class>/ct_<i>.dcm`` (no_lesion, lesion): the lesion is +20 HU in the
    liver, plain inside the tag window (soft tissue, C 50 / W 100) and all but lost under a
    full-range min-max mapping. Files cycle through :data:`CT_VARIANTS`."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        raise VlmprobeError("The ctdicom phantom needs pydicom: pip install pydicom.") from None
    classes = ("no_lesion", "lesion")
    counts = proportional_counts(dict.fromkeys(classes, 1), n)
    rows = []
    with progress_bar("phantom ctdicom", n, enabled=progress) as advance:
        for k, label in enumerate(_labels(counts, list(classes))):
            hu, fields = _ct_hu(np.random.default_rng([seed, 1, k]), label == 1, 128)
            rel = f"{classes[label]}/ct_{k:04d}.dcm"
            (out / classes[label]).mkdir(exist_ok=True)
            _ct_dicom(hu, k % len(CT_VARIANTS), out / rel)
            rows.append({"path": rel, "label": classes[label],
                         "variant": CT_VARIANTS[k % len(CT_VARIANTS)], **fields})
            advance(1)
    _write_manifest(out, rows)
    return {"class_counts": counts, "window": {"centre": CT_WINDOW[0], "width": CT_WINDOW[1]},
            "lesion_contrast_hu": CT_LESION_HU, "variants": CT_VARIANTS,
            "signal": " ".join(_write_ctdicom.__doc__.split())}


GENERATORS["ctdicom"] = _write_ctdicom
