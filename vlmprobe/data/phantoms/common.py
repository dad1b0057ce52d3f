"""What every phantom shares: the model whose crop the cues must survive, a 5x7 bitmap font,
soft drawing primitives, proportional class counts and the per-image truth manifest."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ...encoders.geometry import input_geometry
from ...registry import get_dataset_entry
from ...validation import VlmprobeError

#: The model whose centre crop the word and the lesion must survive.
CROP_MODEL = "efficientnet_lite0"


MIN_PER_CLASS = 3


PHANTOM_MANIFEST = "manifest.csv"


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
_GLYPHS[" "] = (".....",) * 7


def text_bitmap(word: str, scale: int) -> np.ndarray:
    """Boolean [7*scale, (6*len-1)*scale] rendering of ``word``: exact, whatever fonts exist."""
    cols = []
    for k, ch in enumerate(word):
        if k:
            cols.append(np.zeros((7, 1), bool))
        cols.append(np.array([[c == "#" for c in row] for row in _GLYPHS[ch]]))
    return np.kron(np.hstack(cols), np.ones((scale, scale), bool))


def smooth_noise(rng, h: int, w: int, step: int) -> np.ndarray:
    """Smooth random field, about unit sd, correlation length ~ ``step`` px.

    White noise on a grid ``step`` times coarser, upsampled bicubically: ten times faster than a
    wide Gaussian filter at full size, which matters at 600 images.
    """
    gh, gw = h // step + 4, w // step + 4
    coarse = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), "F")
    fine = np.asarray(coarse.resize((gw * step, gh * step), Image.BICUBIC))
    return fine[2 * step:2 * step + h, 2 * step:2 * step + w] / 0.77


def kept_box(w: int, h: int, cfg) -> tuple[int, int, int, int]:
    """Box ``x0, y0, x1, y1`` (end-exclusive) of the original pixels the model input keeps."""
    seen = input_geometry(cfg, w, h).seen_mask()
    xs, ys = np.flatnonzero(seen.any(0)), np.flatnonzero(seen.any(1))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


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


def gauss(h: int, w: int, cx: float, cy: float, rx: float, ry: float | None = None,
           power: float = 1.0) -> np.ndarray:
    """A soft blob: exp(-(d^2)^power), 1 at its centre; power > 1 gives a flat top, sharp edge."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / (ry or rx)) ** 2
    return np.exp(-(d2 ** power))


def paint(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Blend ``colour`` (grey or RGB, 0..1) into ``img`` [h, w, 3] with weight ``alpha``."""
    img *= 1 - alpha[..., None]
    img += alpha[..., None] * np.asarray(colour, np.float32).reshape(1, 1, -1)


def stamp(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, colour,
           strength: float = 0.9, power: float = 2.0) -> None:
    """:func:`paint` of a small :func:`gauss` blob, computed only in its window (fast)."""
    h, w = img.shape[:2]
    reach = 3 * max(rx, ry)
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    if x0 < x1 and y0 < y1:
        paint(img[y0:y1, x0:x1], strength * gauss(y1 - y0, x1 - x0, cx - x0, cy - y0, rx, ry,
                                                    power), colour)


def stroke(img, x: float, y: float, angle: float, length: float, width: float, colour,
          strength: float = 0.8) -> None:
    for t in np.linspace(-length / 2, length / 2, max(2, int(length / width))):
        stamp(img, x + t * np.cos(angle), y + t * np.sin(angle), width, width, colour,
               strength, 1.0)


def dots(rng, img, n: int, r: tuple[float, float], colour, box=None, power: float = 2.0) -> None:
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box or (0, 0, w, h)
    for _ in range(int(n)):
        rr = rng.uniform(*r)
        stamp(img, rng.uniform(x0, x1), rng.uniform(y0, y1), rr, rr * rng.uniform(0.7, 1.3),
               colour, 0.9, power)


def speckle(rng, h: int, w: int, sd: float, step: int = 3) -> np.ndarray:
    return (sd * smooth_noise(rng, h, w, step)).astype(np.float32)[..., None]


def write_manifest(out: Path, rows: list[dict], name: str = PHANTOM_MANIFEST) -> None:
    with open(out / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def class_labels(counts: dict[str, int], classes: list[str]) -> list[int]:
    return [k for k, c in enumerate(classes) for _ in range(counts[c])]


def save_image(out: Path, rel: str, a: np.ndarray) -> None:
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(out / rel, **({"quality": 92} if rel.endswith(".jpg") else {}))


def expected_counts(name: str) -> dict[str, int]:
    return get_dataset_entry(name).expected_counts


def lesion_shape(rng, shape: str, rx: float, ry: float, pad: int) -> tuple[np.ndarray, int, int]:
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
