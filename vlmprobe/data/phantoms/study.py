"""The study's other seven datasets, each in its real layout and formats with a class signal drawn
from textbook cues (listed per dataset below) and one shared nuisance: the acquisition site.

Site "B" images carry
a bright vertical stripe at the left of the kept crop (a device/border artefact) and, where the
image is wide enough, the burnt-in text "SITE B"; site "A" images the text "SITE A" and no
stripe. The site follows the label as the BUSI word does: with probability r the class's site
(classes alternate A, B, A, ... in label order), otherwise A or B uniformly. Every image's truth
(label, site, stripe box, signal parameters, patient) is in ``manifest.csv``, joined to the
samples by the loader of any phantom root.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...data.loaders import MEDMNIST_SIZES
from ...messages import progress_bar
from ...registry import get_model_entry
from ...validation import VlmprobeError
from .common import (CROP_MODEL, MIN_PER_CLASS, class_labels, dots, expected_counts, gauss,
                     kept_box, lesion_shape, paint, proportional_counts, save_image, smooth_noise,
                     speckle, stroke, text_bitmap, write_manifest)

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


def _sites(n_classes: int, labels: list[int], r: float, rng) -> list[str]:
    keep = rng.random(len(labels)) < r
    other = rng.integers(0, 2, len(labels))
    return ["AB"[k % 2] if c else "AB"[o] for k, c, o in zip(labels, keep, other)]


def _mark_site(img: np.ndarray, site: str, cfg) -> dict:
    """Stripe (site B) and text (both sites, if wide enough) inside the kept crop; their boxes."""
    h, w = img.shape[:2]
    kx0, ky0, kx1, ky1 = kept_box(w, h, cfg)
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


# Signal generators: (rng, class index, width, height) -> (float RGB [h, w, 3] in 0..1, fields).
def _draw_brainmr(rng, k, w, h):
    """MRI slice: skull ring, brain; glioma = large ring-enhancing irregular mass with a dark
    necrotic core; meningioma = bright homogeneous mass against the skull; pituitary = small
    bright mass at the skull base midline; no tumour = none."""
    img = np.zeros((h, w, 3), np.float32)
    cx, cy = w / 2 + rng.uniform(-8, 8), h / 2 + rng.uniform(-8, 8)
    rx, ry = w * rng.uniform(0.33, 0.38), h * rng.uniform(0.40, 0.44)
    paint(img, gauss(h, w, cx, cy, rx * 1.08, ry * 1.08, 6), 0.85)  # skull
    paint(img, gauss(h, w, cx, cy, rx, ry, 6), 0.42)
    img += speckle(rng, h, w, 0.05, 6) * (img > 0.1)
    name = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")[k]
    if name == "glioma_tumor":
        lx, ly, lr = cx + rng.uniform(-0.4, 0.4) * rx, cy + rng.uniform(-0.4, 0.2) * ry, w * 0.11
        paint(img, gauss(h, w, lx, ly, lr, lr * 0.85, 3), 0.9)
        paint(img, gauss(h, w, lx, ly, lr * 0.6, lr * 0.5, 3), 0.12)
    elif name == "meningioma_tumor":
        a = rng.uniform(0, 2 * np.pi)
        lx, ly, lr = cx + 0.78 * rx * np.cos(a), cy + 0.78 * ry * np.sin(a), w * 0.08
        paint(img, gauss(h, w, lx, ly, lr, lr, 4), 0.97)
    elif name == "pituitary_tumor":
        lx, ly, lr = cx, cy + 0.55 * ry, w * 0.045
        paint(img, gauss(h, w, lx, ly, lr, lr, 4), 0.95)
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
    body = gauss(h, w, cx, cy, w * prng.uniform(0.36, 0.46), h * prng.uniform(0.26, 0.36), 5)
    paint(img, body, 0.55)
    img += (0.12 * smooth_noise(prng, h, w, max(4, w // 6)) * body)[..., None]  # this patient's
    lungs = []
    for side in (-1, 1):
        lx, ly = cx + side * w * prng.uniform(0.15, 0.22), cy + prng.uniform(-0.06, 0.04) * h
        lungs.append((lx, ly))
        paint(img, gauss(h, w, lx, ly, w * prng.uniform(0.11, 0.16), h * prng.uniform(0.18, 0.26),
                           4), 0.06)
    n_ggo = int(prng.integers(3, 7)) if k == 0 else 0
    for _ in range(n_ggo):
        lx, ly = lungs[prng.integers(0, 2)]
        ox = prng.choice([-1, 1]) * prng.uniform(0.05, 0.11) * w
        paint(img, 0.85 * gauss(h, w, lx + ox, ly + prng.uniform(-0.18, 0.18) * h,
                                  prng.uniform(12, 20) * w / 256), 0.42)
    for lx, ly in lungs:  # vessels: small bright dots
        dots(prng, img, 10, (1.0, 2.0), 0.5, (lx - 0.1 * w, ly - 0.2 * h, lx + 0.1 * w, ly + 0.2 * h))
    img += speckle(rng, h, w, 0.015, 2)
    return img, {"n_opacities": n_ggo}


def _draw_chest_xray(rng, k, w, h):
    """Frontal chest X-ray: bright thorax, two dark lung fields, heart shadow; pneumonia = dense
    bright consolidation patches in the lung fields."""
    img = np.full((h, w, 3), 0.25, np.float32)
    paint(img, gauss(h, w, w / 2, h * 0.55, w * 0.45, h * 0.5, 3), 0.7)
    lungs = [(w / 2 + s * w * 0.2 + rng.uniform(-1, 1) * w / 40, h * 0.5) for s in (-1, 1)]
    for lx, ly in lungs:
        paint(img, gauss(h, w, lx, ly, w * 0.15, h * 0.3, 3), 0.18)
    paint(img, gauss(h, w, w * 0.55, h * 0.62, w * 0.12, h * 0.14, 2), 0.6)  # heart
    n = int(rng.integers(2, 4)) if k == 1 else 0
    for _ in range(n):
        lx, ly = lungs[rng.integers(0, 2)]
        paint(img, 0.85 * gauss(h, w, lx + rng.uniform(-0.06, 0.06) * w,
                                  ly + rng.uniform(-0.18, 0.22) * h, w * rng.uniform(0.06, 0.1)), 0.75)
    img += speckle(rng, h, w, 0.03, max(1, w // 28))
    return img, {"n_consolidations": n}


def _draw_breakhis(rng, k, w, h, tint=(1.0, 1.0, 1.0), mag=40):
    """H&E histology: pink stroma, purple nuclei; malignant = dense, large, pleomorphic,
    hyperchromatic nuclei; benign = sparse, small, regular ones. Magnification scales nuclei."""
    zoom = {40: 1.0, 100: 1.3, 200: 1.6, 400: 2.0}[mag]
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([0.94, 0.76, 0.86], np.float32) * np.asarray(tint, np.float32)
    img += speckle(rng, h, w, 0.04, 8)
    if k == 0:
        n, r, colour = 45 / zoom, (2.5 * zoom, 3.5 * zoom), (0.45, 0.3, 0.65)
    else:
        n, r, colour = 140 / zoom, (3.5 * zoom, 7.5 * zoom), (0.25, 0.1, 0.42)
    dots(rng, img, n, r, np.asarray(colour) * np.asarray(tint), power=1.5 if k else 3)
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
    img += speckle(rng, h, w, 0.02, 6)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.7) * h
        ry = rng.uniform(16, 22) * s
        paint(img, 0.8 * gauss(h, w, cx, cy, ry * elong, ry, 3), (0.55, 0.78, 0.82))
        if halo:
            paint(img, gauss(h, w, cx, cy, nr * 2.2 * s, nr * 2.0 * s, 3), (0.93, 0.95, 0.96))
        paint(img, gauss(h, w, cx, cy, nr * s, nr * s * rng.uniform(0.8, 1.0), 3),
               np.array([0.5, 0.35, 0.7]) * (1.3 - dark))
    if name == "Candida":
        for _ in range(3):
            stroke(img, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, np.pi), 60 * s,
                  1.5 * s, (0.8, 0.3, 0.5))
    elif name == "Trichomonas":
        dots(rng, img, 6, (3 * s, 5 * s), (0.55, 0.65, 0.5))
    elif name == "Actinomyces":
        dots(rng, img, 1, (14 * s, 18 * s), (0.3, 0.2, 0.45), (0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h), 0.8)
    return img, {"level_3_cue": name}


def _draw_fundus(rng, k, w, h, eye="l"):
    """Fundus photograph: orange disc, optic disc, vessels; DR grade g adds microaneurysms and
    haemorrhages (grade >= 1), hard exudates (>= 2), large blot haemorrhages (>= 3) and
    neovascular tufts (4)."""
    img = np.zeros((h, w, 3), np.float32)
    cx, cy, r = w / 2, h / 2, 0.46 * min(w, h)
    paint(img, gauss(h, w, cx, cy, r, r, 12), (0.85, 0.42, 0.2))
    img *= (0.75 + 0.25 * gauss(h, w, cx, cy, r * 0.8))[..., None]
    ox = cx + (-1 if eye == "l" else 1) * 0.35 * r
    paint(img, gauss(h, w, ox, cy, 0.12 * r, 0.13 * r, 3), (0.98, 0.9, 0.6))
    for a in np.linspace(0, 2 * np.pi, 6, endpoint=False) + rng.uniform(0, 1):
        stroke(img, ox + 0.47 * r * np.cos(a), cy + 0.47 * r * np.sin(a), a, 0.65 * r,
              0.015 * r, (0.55, 0.1, 0.08), 0.7)
    box = (cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r)
    n_red, n_ex, n_blot = (0, 4, 12, 22, 30)[k], (0, 0, 6, 12, 18)[k], (0, 0, 0, 3, 5)[k]
    dots(rng, img, n_red, (0.012 * r, 0.025 * r), (0.45, 0.02, 0.02), box)
    dots(rng, img, n_ex, (0.015 * r, 0.03 * r), (1.0, 0.95, 0.45), box)
    dots(rng, img, n_blot, (0.05 * r, 0.08 * r), (0.35, 0.02, 0.02), box, 1.2)
    if k == 4:
        dots(rng, img, 4, (0.03 * r, 0.04 * r), (0.7, 0.05, 0.1), box, 0.7)
    img += speckle(rng, h, w, 0.015, 4) * (img.sum(-1, keepdims=True) > 0.1)
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
    img += speckle(rng, h, w, 0.02, 8)
    cx, cy, r = w / 2 + rng.uniform(-10, 10), h / 2 + rng.uniform(-10, 10), rad * w
    if irregular:
        shape, ox, oy = lesion_shape(rng, "spiculated", r * 0.8, r * 0.7, 2)
        alpha = np.zeros((h, w), np.float32)
        y0, x0 = int(cy - oy), int(cx - ox)
        ys, xs = np.nonzero(shape)
        ok = (ys + y0 >= 0) & (ys + y0 < h) & (xs + x0 >= 0) & (xs + x0 < w)
        alpha[ys[ok] + y0, xs[ok] + x0] = 0.95
        alpha = ndimage.gaussian_filter(alpha, 2)
    else:
        alpha = 0.95 * gauss(h, w, cx, cy, r, r * rng.uniform(0.8, 1.0), 3)
    paint(img, alpha, colour)
    inner = (cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r)
    if name == "MEL":
        paint(img, 0.6 * gauss(h, w, cx, cy, 0.4 * r), (0.45, 0.55, 0.7))
    elif name == "BCC":
        for _ in range(5):
            stroke(img, rng.uniform(inner[0], inner[2]), rng.uniform(inner[1], inner[3]),
                  rng.uniform(0, np.pi), 0.6 * r, 1.2, (0.75, 0.1, 0.1))
    elif name in ("AK", "BKL"):
        dots(rng, img, 25, (1.5, 3.5), (0.95, 0.92, 0.85) if name == "AK" else (0.4, 0.3, 0.2), inner)
    elif name in ("DF", "SCC"):
        paint(img, gauss(h, w, cx, cy, 0.35 * r, 0.35 * r, 3),
               (0.97, 0.96, 0.94) if name == "DF" else (0.95, 0.9, 0.6))
    elif name == "VASC":
        dots(rng, img, 12, (0.08 * r, 0.14 * r), (0.45, 0.0, 0.15), inner, 3)
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


def _facts(counts, rows, draw, extra=None) -> dict:
    return {"class_counts": counts, "site_counts": dict(sorted(
                {s: sum(r["site"] == s for r in rows) for s in "AB"}.items())),
            "site_model": SITE_MODEL, "signal": " ".join((draw.__doc__ or "").split()),
            "crop_model": CROP_MODEL, **(extra or {})}


def _write_folder(name, draw, size, colour, filename):
    """Writer for ImageFolder datasets: ``<class>/<filename(class, i)>``."""
    def write(out: Path, n: int, seed: int, r: float, progress: bool, _size=None,
              minimum: int = MIN_PER_CLASS) -> dict:
        counts = proportional_counts(expected_counts(name), n, minimum)
        classes = list(counts)
        labels = class_labels(counts, classes)
        items = _render(draw, labels, len(classes), size, seed, r, name, progress, colour=colour)
        rows, seen = [], Counter()
        for label, (a, fields) in zip(labels, items):
            c = classes[label]
            seen[c] += 1
            rel = f"{c}/{filename(c, seen[c])}"
            save_image(out, rel, a)
            rows.append({"path": rel, "label": c, **fields})
        write_manifest(out, rows)
        return _facts(counts, rows, draw)
    return write


def _write_sarscov2ct(out, n, seed, r, progress, _size=None, minimum=MIN_PER_CLASS):
    """Several slices per patient (same anatomy, opacities and scanner site, new noise): near
    duplicates that an ungrouped split scatters over train and test. Patients are in the
    manifest only, as the real set ships none."""
    counts = proportional_counts(expected_counts("sarscov2ct"), n, minimum)
    classes = list(counts)
    labels = class_labels(counts, classes)
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
        save_image(out, rel, a)
        rows.append({"path": rel, "label": c, "patient": p, **fields})
    write_manifest(out, rows)
    return _facts(counts, rows, _draw_chest_ct, {"slices_per_patient": per})


def _write_pneumoniamnist(out, n, seed, r, progress, size=28, minimum=MIN_PER_CLASS):
    """MedMNIST release file: train (the paper's subset, ``n`` images), val and test splits."""
    if size not in MEDMNIST_SIZES:
        raise VlmprobeError(f"size {size} is not a MedMNIST size; choose one of {MEDMNIST_SIZES}.")
    real = expected_counts("pneumoniamnist")
    file = "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"
    parts = {"train": proportional_counts(real, n, minimum)}
    parts["val"] = parts["test"] = proportional_counts(real, max(6, n // 8), 3)
    arrays, rows, counts = {}, [], {}
    for i, (split, c) in enumerate(parts.items()):
        labels = class_labels(c, list(real))
        items = _render(_draw_chest_xray, labels, 2, (size, size), seed + 7919 * i, r,
                        f"pneumoniamnist {split}", progress, colour=False)
        arrays[f"{split}_images"] = np.stack([a for a, _ in items])
        arrays[f"{split}_labels"] = np.array(labels, np.uint8).reshape(-1, 1)
        rows += [{"path": f"{file}#{split}_images/{k}", "label": list(real)[y], **f}
                 for k, (y, (_, f)) in enumerate(zip(labels, items))]
        counts[split] = c
    np.savez_compressed(out / file, **arrays)
    write_manifest(out, rows)
    return _facts(counts["train"], rows, _draw_chest_xray, {"size": size, "split_counts": counts})


_BREAKHIS_SUBTYPES = {"benign": (("adenosis", "A"), ("fibroadenoma", "F"),
                                 ("phyllodes_tumor", "PT"), ("tubular_adenoma", "TA")),
                      "malignant": (("ductal_carcinoma", "DC"), ("lobular_carcinoma", "LC"),
                                    ("mucinous_carcinoma", "MC"), ("papillary_carcinoma", "PC"))}


def _write_breakhis(out, n, seed, r, progress, _size=None, minimum=MIN_PER_CLASS):
    """Patients with several images at four magnifications and a patient-specific stain tint:
    a probe can learn the patient, so an ungrouped split overstates it."""
    counts = proportional_counts(expected_counts("breakhis"), n, minimum)
    classes = list(counts)
    labels = class_labels(counts, classes)
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
        save_image(out, rel, a)
        rows.append({"path": rel, "label": c, "patient": pid, "magnification": mag, **fields})
    write_manifest(out, rows)
    return _facts(counts, rows, _draw_breakhis,
                  {"patients": len({r_["patient"] for r_ in rows})})


def _write_hicervix(out, n, seed, r, progress, _size=None, minimum=MIN_PER_CLASS):
    """``train.csv`` (image_name, level_1, level_2, level_3) and ``train/*.jpg``, over a
    stand-in 3-level hierarchy (:data:`HICERVIX_TREE`), classes equally frequent."""
    names = [t[2] for t in HICERVIX_TREE]
    counts = proportional_counts(dict.fromkeys(names, 1), n, minimum)
    labels = class_labels(counts, names)
    items = _render(_draw_hicervix, labels, len(names), (128, 128), seed, r, "hicervix", progress)
    rows, gt = [], []
    for k, (label, (a, fields)) in enumerate(zip(labels, items)):
        file = f"HC_{k:05d}.jpg"
        save_image(out, f"train/{file}", a)
        gt.append(dict(zip(("image_name", "level_1", "level_2", "level_3"), (file, *HICERVIX_TREE[label]))))
        rows.append({"path": f"train/{file}", "label": names[label], **fields})
    write_manifest(out, gt, "train.csv")
    write_manifest(out, rows)
    return _facts(counts, rows, _draw_hicervix, {"hierarchy": [list(t) for t in HICERVIX_TREE]})


def _write_deepdrid(out, n, seed, r, progress, _size=None, minimum=MIN_PER_CLASS):
    """Regular-fundus training CSV and ``Images/<patient>/<patient>_<l|r><1|2>.jpg``: two images
    per eye, one grade per patient (``patient_DR_Level``), grades equally frequent."""
    grades = ["0", "1", "2", "3", "4"]
    counts = proportional_counts(dict.fromkeys(grades, 1), n, max(4, minimum))  # 2 per eye
    labels = class_labels(counts, grades)
    ids, pid = [], 0
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
        save_image(out, rel, a)
        gt.append({"patient_id": p, "image_id": image_id,
                   "image_path": f"\\regular_fundus_images\\regular-fundus-training\\Images\\{p}\\{image_id}.jpg",
                   "left_eye_DR_Level": g if eye == "l" else "",
                   "right_eye_DR_Level": g if eye == "r" else "", "patient_DR_Level": g,
                   "Overall quality": 1})
        rows.append({"path": rel, "label": str(g), "patient": p, **fields})
    write_manifest(out / base, gt, "regular-fundus-training.csv")
    write_manifest(out, rows)
    return _facts(counts, rows, _draw_fundus)


def _write_isic2019(out, n, seed, r, progress, _size=None, minimum=MIN_PER_CLASS):
    """Ground-truth CSV (one-hot, UNK column empty), ``ISIC_2019_Training_Input/*.jpg`` and the
    metadata CSV (age_approx, anatom_site_general, lesion_id, sex); age follows the class (known
    metadata signal); every fourth image is a second exposure of the previous lesion (same
    lesion_id: a near duplicate that an ungrouped split may put on both sides)."""
    real = expected_counts("isic2019")
    counts = proportional_counts(real, n, minimum)
    classes = list(real)
    labels = class_labels(counts, classes)
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
        save_image(out, rel, a)
        gt.append({"image": image, **{x: "1.0" if x == c else "0.0" for x in classes}})
        meta.append({"image": image, "age_approx": int(5 * round((mean_age[c] + prng.normal(0, 8)) / 5)),
                     "anatom_site_general": prng.choice(["anterior torso", "head/neck",
                                                         "lower extremity", "upper extremity"]),
                     "lesion_id": f"BCN_{lesion:07d}", "sex": prng.choice(["male", "female"])})
        rows.append({"path": rel, "label": c, "second_view_of":
                     f"ISIC_{repeats[k]:07d}" if k in repeats else "", **fields})
    write_manifest(out, gt, "ISIC_2019_Training_GroundTruth.csv")
    write_manifest(out, meta, "ISIC_2019_Training_Metadata.csv")
    write_manifest(out, rows)
    return _facts(counts, rows, _draw_isic, {"mean_age_by_class": mean_age})


#: dataset key -> writer(out, n, seed, r, progress, size) -> facts for phantom.json
WRITERS = {
    "brainmr": _write_folder("brainmr", _draw_brainmr, (256, 256), False,
                             lambda c, i: f"image({i}).jpg"),
    "sarscov2ct": _write_sarscov2ct,
    "pneumoniamnist": _write_pneumoniamnist,
    "breakhis": _write_breakhis,
    "hicervix": _write_hicervix,
    "deepdrid": _write_deepdrid,
    "isic2019": _write_isic2019,
}
