"""The RISE stage: caches + saved probes -> maps on original images, region numbers, sanity
checks, figures."""
from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cache import Cache, stage_dir, stage_inputs
from ..cache.chunks import write_atomic, written_beside
from ..data import file_digest, images_root, read_sample, sample_file
from ..data.decode import sample_kind
from ..data.splits import read_split
from ..encoders.transforms import input_transform
from ..extraction.batches import check_precision, precision_autocast
from ..probe import LinearProbe, probe_path
from ..messages import progress_bar
from ..provenance import provenance
from ..validation import VlmprobeError, config, with_options
from .figures import plot_rise_grid, plot_rise_panels
from .saliency import (RiseConfig, deletion_insertion_auc, mass_in_region, pointing_game,
                       rise_saliency)
from .text_boxes import Box, boxes_mask, detect_text_boxes, read_box_file

log = logging.getLogger(__name__)


# -- the stage: caches + saved probes -> maps on original images, numbers, figures ----------
@config
class ImageChoice:
    """Which images RISE explains.

    k: how many held-out test images, taking the true classes in turn (None: one per class);
    ids: exactly these relpaths, from any split (the split is recorded); misclassified: only
    test images the probe gets wrong. Seeded by the RISE seed.
    """

    k: int | None = None
    ids: tuple[str, ...] = ()
    misclassified: bool = False


def _test_relpaths(probe: LinearProbe) -> set[str]:
    """The held-out test images of the split the probe was fitted on."""
    split = read_split(Path(probe.info["split_file"]))
    return {r for r, t in zip(split.relpaths, split.test) if t}


def choose_images(cache: Cache, probe: LinearProbe, choice: ImageChoice, seed: int,
                  test: set[str] | None = None) -> list[int]:
    """Indices into ``cache`` of the images to explain (see :class:`ImageChoice`); ``test``: the
    probe's test relpaths, when the caller has already read them."""
    if choice.ids:
        if choice.k is not None or choice.misclassified:
            raise VlmprobeError("Name images either by --ids or by --images/--misclassified, "
                                "not both.")
        index = {r: i for i, r in enumerate(cache.relpaths)}
        unknown = [r for r in choice.ids if r not in index]
        if unknown:
            raise VlmprobeError(f"{cache.path} has no image {unknown[0]!r}; ids are relpaths as "
                                f"the cache stores them, e.g. {cache.relpaths[0]!r}.")
        return [index[r] for r in choice.ids]
    if choice.k is not None and choice.k < 1:
        raise VlmprobeError(f"--images must be >= 1; got {choice.k}.")
    test = _test_relpaths(probe) if test is None else test
    pool = np.array([r in test for r in cache.relpaths])
    y, _, _ = cache.label_view(_column(probe.info.get("label_view", "class")))
    if choice.misclassified:
        predicted = probe.decision_function(cache.embeddings).argmax(1)
        pool &= predicted != y
        if not pool.any():
            raise VlmprobeError(f"The probe of {cache.path} misclassifies none of its test images.")
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(pool & (y == c)))) for c in range(y.max() + 1)]
    n = choice.k if choice.k is not None else sum(1 for q in queues if q)
    picked = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop(0)))
    return picked


def random_probe(probe: LinearProbe, seed: int) -> LinearProbe:
    """The model-randomisation sanity check (Adebayo et al., NeurIPS 2018): same scaler,
    intercepts and per-class weight norms as ``probe``, random directions. A saliency map that
    survives this explains the image, not the model."""
    rng = np.random.default_rng([seed, 1])
    coef = rng.standard_normal(probe.coef.shape)
    coef *= np.linalg.norm(probe.coef, axis=1, keepdims=True) / np.linalg.norm(coef, axis=1,
                                                                               keepdims=True)
    return LinearProbe(probe.mean, probe.scale, coef, probe.intercept, probe.class_names,
                       {"random_probe_of": probe.info.get("label_view", "class"), "seed": seed})


def _column(label: str) -> str | None:
    return None if label == "class" else label


def _load_probe(cache: Cache, label: str, out: Path | None) -> LinearProbe:
    """The saved probe in ``out`` (where `vlmprobe probe --out` put it), else beside the cache."""
    stems = list(dict.fromkeys([probe_path(cache, label, out), probe_path(cache, label)]))
    stem = next((s for s in stems if s.with_name(s.name + ".npz").is_file()), None)
    if stem is None:
        flag = "" if label == "class" else f" --label {label}"
        raise VlmprobeError(f"No saved {label!r} probe for {cache.path} (looked for "
                            f"{' and '.join(f'{s}.npz' for s in stems)}); run `vlmprobe probe"
                            f"{flag}` on this cache first.")
    probe = LinearProbe.load(stem)
    if probe.info.get("cache_key") != cache.cache_key:
        raise VlmprobeError(f"The saved probe {stem} was fitted on another cache than {cache.path};"
                            " re-run `vlmprobe probe` on it first.")
    probe.info["path"] = stem.as_posix()
    return probe


def _lesion_mask(cache: Cache, i: int, root: Path, size: tuple[int, int]) -> np.ndarray | None:
    """Union of the image's mask files, checked against the image size."""
    lesion = None
    mask_paths = cache.metadata["mask_paths"][i] if "mask_paths" in cache.metadata else ""
    for m in (m for m in mask_paths.split(";") if m):
        with Image.open(root / m) as im:
            if im.size != size:
                raise VlmprobeError(f"Mask {root / m} is {im.size[0]} x {im.size[1]} but its image "
                                    f"{cache.relpaths[i]} is {size[0]} x {size[1]}; masks must "
                                    "be drawn on the image they belong to.")
            arr = np.asarray(im.convert("L")) > 127
        lesion = arr if lesion is None else lesion | arr
    return lesion if lesion is not None and lesion.any() else None


def _text_boxes(cache: Cache, i: int, image, box_file: dict | None,
                detect: bool) -> tuple[list[Box], str]:
    """Burnt-in text boxes and where they come from: a user's file, the dataset, the detector."""
    if box_file is not None:
        return box_file.get(cache.relpaths[i], []), "file"
    if "text_x0" in cache.metadata:
        if not cache.metadata["text_x0"][i]:
            return [], "dataset"
        return [tuple(int(float(cache.metadata[f"text_{k}"][i])) for k in ("x0", "y0", "x1", "y1"))
                ], "dataset"
    if detect:
        return detect_text_boxes(image), "detector"
    return [], ""


def _region_numbers(sal: np.ndarray, region: np.ndarray | None, name: str) -> dict:
    if region is None or not region.any():
        return {f"{name}_{k}": None for k in ("mass", "area", "enrichment", "pointing")}
    mass, area = mass_in_region(sal, region), float(region.mean())
    # enrichment > 1: the evidence concentrates on the region
    return {f"{name}_mass": mass, f"{name}_area": area,
            f"{name}_enrichment": mass / area if area else None,
            f"{name}_pointing": pointing_game(sal, region)}


def _safe_name(relpath: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in relpath)


def cache_encoder(cache: Cache, device="cpu", trust_remote_code: bool | None = None):
    """(encoder, tap): the model that made ``cache`` (a further tap's view, ``<model>@<tap>``,
    too) and the tap its embeddings are, refused when the weights are not the cache's."""
    from ..encoders import load_encoder  # imported late: torch models

    if cache.imported:
        raise VlmprobeError(f"{cache.path} holds embeddings imported from "
                            f"{', '.join(cache.imported['files'])} (vlmprobe cache import): RISE "
                            "runs images through the encoder that made them, and vlmprobe has "
                            "none for an imported cache. probe and umap read it; for RISE, add "
                            "the model as a registry entry and run `vlmprobe extract`.")
    encoder = load_encoder(cache.registry_key, device,
                           trust_remote_code=trust_remote_code)
    if encoder.weights_sha256_ != cache.weights_sha256:
        raise VlmprobeError(f"The weights of {cache.model!r} differ from those that made "
                            f"{cache.path}; re-extract the cache (vlmprobe extract --force).")
    return encoder, cache.tap or encoder.entry.tap


def _cache_precision(cache: Cache, device: torch.device) -> str:
    """The precision the cache was extracted at (fp32 | fp16 | bf16), which RISE encodes in, so
    the probe scores the kind of embedding it was fitted on; fp16 runs on a GPU only."""
    precision = cache.precision
    if precision == "fp16" and device.type == "cpu":
        raise VlmprobeError(f"{cache.path} was extracted at fp16, which runs on a GPU only; "
                            "explain it on one (--device cuda), so that RISE encodes the images "
                            "as the probe's embeddings were.")
    check_precision(precision, device)
    return precision


def black_fill_value(encoder) -> torch.Tensor:
    """``fill="black"``'s value: a raw 0 pixel in the encoder's normalized space, [3, 1, 1]."""
    mean = torch.tensor(encoder.preprocess_cfg.mean).view(3, 1, 1)
    std = torch.tensor(encoder.preprocess_cfg.std).view(3, 1, 1)
    return (-mean / std).to(encoder.device)


@dataclass
class RiseMaps:
    """One cache's RISE maps: per explained image the map of every probe, in the model's input
    coordinates and on the original image, the numbers per image and probe, and the files."""

    cache: Cache
    config: RiseConfig
    probes: list[str]                 # the labels explained: "class", or metadata columns
    relpaths: list[str]               # the images explained
    maps_input: list[np.ndarray]      # per image [probes, h, w]: centred map, model input
    # per image [probes, H, W]: the same on the image (NaN unseen); for a volume [probes, X, Y,
    # Z] in the model's input grid, which its NIfTI maps place in RAS
    maps_original: list[np.ndarray]
    records: list[dict]               # per image and probe: region numbers and sanity checks
    by_probe: dict[str, dict]         # per probe: the mean of each number over the images
    figure: Path                      # overview (rows per class), PNG with SVG beside
    panels: Path                      # folder of one figure per image
    table: Path                       # records as CSV (JSON with provenance beside)
    maps_file: Path                   # maps_input and maps_original as npz

    def to_frame(self):
        """One row per image and probe."""
        import pandas as pd

        return pd.DataFrame(self.records)


@dataclass
class RiseRun(Sequence):
    """The RISE stage's results: :class:`RiseMaps` per cache (a sequence of them)."""

    maps: list[RiseMaps]

    def __getitem__(self, i):
        return self.maps[i]

    def __len__(self) -> int:
        return len(self.maps)

    def to_frame(self):
        import pandas as pd

        return pd.concat([m.to_frame().assign(model=m.cache.model, dataset=m.cache.dataset)
                          for m in self.maps], ignore_index=True)


@dataclass
class _Explainer:
    """What every image of one cache is explained with: the probes side by side in one score
    vector (the asked ones, then the first one's random-direction twin: the sanity check), the
    encoder and its input transform, and the choices that hold for every image."""

    cache: Cache
    cfg: RiseConfig
    labels: list[str]
    probes: list[LinearProbe]
    heads: list[LinearProbe]
    encoder: object
    tap: str
    precision: str                  # the cache's: the probe scores the embeddings it was fitted on
    transform: object
    root: Path
    test: set[str]
    target: str | None
    fill_value: torch.Tensor | None
    box_file: dict | None
    detect_text: bool
    causal_steps: int

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [len(h.class_names) for h in self.heads])

    @property
    def volumes(self) -> bool:
        """Whether the cache holds whole volumes (3-D masks, maps in the model's input grid)."""
        return is_volume_cache(self.cache)

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        with precision_autocast(self.encoder.device, self.precision):
            emb = self.encoder.encode_taps(batch, [self.tap])[self.tap]
        return torch.cat([h.decision_function(emb) for h in self.heads], dim=1)

    def primary_scores(self, batch: torch.Tensor) -> torch.Tensor:
        return self.scores(batch)[:, :len(self.probes[0].class_names)]

    def sample(self, rel: str):
        """The 8-bit image (drawn and searched for text) or the volume, after checking the file
        is the one the cache was made from."""
        path = self.root / sample_file(rel)
        digest = dict(zip(self.cache.files["relpath"], self.cache.files["digest"]))[rel]
        if not path.exists() or file_digest(path) != digest:
            raise VlmprobeError(f"{path} is missing or differs from the file {self.cache.path} "
                                "was extracted from; pass --root pointing at that dataset copy.")
        return read_sample(self.root, rel, self.cache.dicom_window)

    def pixels(self, rel: str, image) -> torch.Tensor:
        """The model's input tensor of ``image`` (``rel``'s :meth:`sample`), float for a float
        cache."""
        window, intensity = self.cache.dicom_window, self.cache.intensity
        source = image if intensity == "8bit" else read_sample(self.root, rel, window, intensity)
        return self.transform(source).to(self.encoder.device)


def is_volume_cache(cache: Cache) -> bool:
    """Whether ``cache`` holds whole volumes (a sample per NIfTI file or DICOM series)."""
    return bool(cache.relpaths) and sample_kind(cache.relpaths[0]) == "volume3d"


def _log_volume_cost(ex: _Explainer, picked: list[int]) -> None:
    """Every mask of a volume is a full forward of a 3-D model: time one, say what the run costs."""
    rel = ex.cache.relpaths[picked[0]]
    pixels = ex.pixels(rel, ex.sample(rel))
    t0 = time.perf_counter()
    with torch.no_grad():
        ex.scores(pixels[None])
    forward = time.perf_counter() - t0
    total = forward * len(picked) * (ex.cfg.n_masks + 2 * (ex.causal_steps + 1))
    took = f"{total / 3600:.1f} h" if total > 3600 else f"{total / 60:.0f} min"
    log.warning(f"RISE on {len(picked)} volume(s): {ex.cfg.n_masks} masks each, every mask a full "
                f"forward of {ex.cache.model} ({forward:.2f} s here on {ex.encoder.device}): about "
                f"{took}. Fewer masks (--n-masks) or a GPU shorten it.")


def _explainer(cache: Cache, cfg: RiseConfig, labels: Sequence[str], target: str | None,
               root: Path | None, device: str, out: Path | None, text_box_file: Path | None,
               detect_text: bool, causal_steps: int,
               trust_remote_code: bool | None) -> _Explainer:
    if cfg.fill == "black" and is_volume_cache(cache):
        raise VlmprobeError(f"{cache.path} holds whole volumes: fill='black' is a raw 0 pixel of "
                            "a 2-D image. Use fill='mean', which for a volume is the model "
                            "input's 0 (for Merlin's transform: -1000 HU, air).")
    labels = list(dict.fromkeys(labels))
    probes = [_load_probe(cache, label, out) for label in labels]
    if target is not None and target not in probes[0].class_names:
        raise VlmprobeError(f"--target {target!r} is not a class of the {labels[0]!r} probe; "
                            f"classes: {', '.join(probes[0].class_names)}.")
    encoder, tap = cache_encoder(cache, device, trust_remote_code)
    return _Explainer(
        cache, cfg, labels, probes, probes + [random_probe(probes[0], cfg.seed)], encoder, tap,
        _cache_precision(cache, encoder.device), input_transform(encoder, cache.intensity),  # a float cache is explained on float input
        images_root(cache, root), _test_relpaths(probes[0]), target,
        black_fill_value(encoder) if cfg.fill == "black" else None,
        read_box_file(text_box_file) if text_box_file is not None else None, detect_text,
        causal_steps)


@dataclass
class _View:
    """Where one sample's maps are scored and drawn: on the original image for a 2-D image
    (maps carried back through the transform's geometry), in the model's input grid for a
    volume (placed in RAS by ``affine``; the NIfTI maps overlay the original in any viewer)."""

    to_original: object             # input-grid map -> the grid the numbers are taken on
    unseen_fraction: float
    lesion: np.ndarray | None
    text: np.ndarray | None
    boxes: list
    box_source: str
    affine: np.ndarray | None = None


def _view(ex: _Explainer, i: int) -> _View:
    """Sample ``i``'s :class:`_View`: its file checked, its masks and text boxes read."""
    image = ex.sample(ex.cache.relpaths[i])
    return _volume_view(ex, i, image) if ex.volumes else _image_view(ex, i, image)


def _image_view(ex: _Explainer, i: int, image) -> _View:
    geometry = ex.encoder.geometry(*image.size)
    boxes, box_source = _text_boxes(ex.cache, i, image, ex.box_file, ex.detect_text)
    return _View(geometry.to_original, geometry.unseen_fraction,
                 _lesion_mask(ex.cache, i, ex.root, image.size),
                 boxes_mask(boxes, image.size) if boxes else None, boxes, box_source)


def _volume_view(ex: _Explainer, i: int, volume) -> _View:
    """A volume's lesion mask (its ``mask`` / ``mask_paths`` files, NIfTI) carried onto the
    model's input grid by the transform's own resampling; no burnt-in text in a volume."""
    from ..data.volumes import load_volume

    meta, lesion = ex.cache.metadata, None
    files = [m for column in ("mask_paths", "mask") if column in meta
             for m in str(meta[column][i]).split(";") if m]
    for m in files:
        seen = ex.transform.mask(load_volume(ex.root / m))
        lesion = seen if lesion is None else lesion | seen
    return _View(lambda m: m, 0.0, lesion if lesion is not None and lesion.any() else None,
                 None, [], "", np.asarray(ex.transform.meta(volume).affine, float))


def _explain_image(ex: _Explainer, i: int, view: _View,
                   advance) -> tuple[list[dict], np.ndarray, np.ndarray, dict]:
    """One image (or volume, its ``view`` read first by :func:`_view`): RISE over every head at
    once, the maps back on the image, the numbers per probe, and the row its figures are drawn
    from."""
    from scipy.stats import spearmanr

    cache, cfg, offsets = ex.cache, ex.cfg, ex.offsets
    rel = cache.relpaths[i]
    image = ex.sample(rel)
    pixels = ex.pixels(rel, image)
    res = rise_saliency(ex.scores, pixels, cfg, ex.fill_value, progress=advance,
                        groups=[len(h.class_names) for h in ex.heads])
    centred = res.centred()
    predicted = [int(np.argmax(res.base_scores[offsets[j]:offsets[j + 1]]))
                 for j in range(len(ex.probes))]
    targets = ([ex.probes[0].class_names.index(ex.target)] if ex.target is not None
               else predicted[:1]) + predicted[1:]
    maps_in = [centred[offsets[j] + t] for j, t in enumerate(targets)]
    random_in = centred[offsets[len(ex.probes)] + targets[0]]
    rank_r = float(spearmanr(maps_in[0].ravel(), random_in.ravel()).statistic)
    maps_orig = [view.to_original(m) for m in maps_in]
    causal = ({f"{name}_auc": v for name, v in deletion_insertion_auc(
        ex.primary_scores, pixels, maps_in[0], targets[0], replace(cfg, score="softmax"),
        ex.fill_value, steps=ex.causal_steps).items()} if ex.causal_steps else {})
    records = []
    for j, (label, probe) in enumerate(zip(ex.labels, ex.probes)):
        y, names, _ = cache.label_view(_column(label))
        c = offsets[j] + targets[j]
        records.append({
            "relpath": rel, "split": "test" if rel in ex.test else "train", "probe": label,
            "true": names[y[i]], "target": probe.class_names[targets[j]],
            "predicted": probe.class_names[predicted[j]],
            "score": float(res.base_scores[c]), "split_half_r": float(res.split_half_r[c]),
            "unseen_fraction": view.unseen_fraction,
            **_region_numbers(maps_orig[j], view.lesion, "lesion"),
            **_region_numbers(maps_orig[j], view.text, "text"),
            "text_box_source": view.box_source,
            "random_probe_rank_r": rank_r if j == 0 else None,
            "deletion_auc": causal.get("deletion_auc") if j == 0 else None,
            "insertion_auc": causal.get("insertion_auc") if j == 0 else None})
    first = records[0]
    log.info(f"  {rel}: true {first['true']}, explained {first['target']}; split-half r = "
             f"{first['split_half_r']:.2f}; rank r with a random-weight probe's map = {rank_r:.2f}")
    maps = [{"saliency": m, "title": f"{label}: {ex.probes[j].class_names[targets[j]]}",
             "cbar_label": "centred RISE saliency"}
            for j, (label, m) in enumerate(zip(ex.labels, maps_orig))]
    maps.append({"saliency": view.to_original(random_in),
                 "title": "random-weight probe (sanity check)",
                 "cbar_label": f"rank r with trained map = {rank_r:.2f}"})
    row = {"maps": maps, "mask": view.lesion, "text_boxes": view.boxes, "true": first["true"],
           "caption": f"{rel}: true {first['true']}, predicted {first['predicted']}, "
                      f"split-half r = {first['split_half_r']:.2f}",
           "short_caption": f"pred. {first['predicted']}" + (
               f" · text {100 * first['text_mass']:.0f}%" if first["text_mass"] is not None
               else "")}
    if ex.volumes:
        focus = view.lesion if view.lesion is not None else maps_in[0] == maps_in[0].max()
        row.update(volume=pixels[0].cpu().numpy(), affine=view.affine,
                   point=np.argwhere(focus).mean(0), spacing=ex.encoder.entry.preprocess.spacing)
    else:
        row["image"] = np.asarray(image)
    return records, np.stack(maps_in), np.stack(maps_orig).astype(np.float32), row


def explain_cache(cache: Cache, cfg: RiseConfig = RiseConfig(), choice: ImageChoice = ImageChoice(),
                  labels: Sequence[str] = ("class",), target: str | None = None,
                  root: Path | None = None, device: str = "auto", out: Path | None = None,
                  text_box_file: Path | None = None, detect_text: bool = False,
                  causal_steps: int = 50, trust_remote_code: bool | None = None) -> RiseMaps:
    """RISE through the cache's encoder and its saved probes, on original images, with numbers.

    ``labels``: the probes to explain ("class", or a metadata column probed with ``vlmprobe
    probe --label``); all are scored on the same masked embeddings (one encoder pass per mask),
    the first is drawn in the overview. A random-direction twin of the first probe
    (:func:`random_probe`) is scored on the same masks too: the rank correlation of its map with
    the trained one is the sanity check. ``target``: the first probe's class to explain
    (default: the predicted one). ``causal_steps``: deletion/insertion curve steps (0: skip);
    the curves are of the class probability (softmax over the probe's classes), as in the RISE
    paper, so the AUCs lie in [0, 1] whatever the scale of the decision values.
    ``trust_remote_code``: the user's opt-in for entries that run hub code (as in extract).
    """
    cfg.check()
    ex = _explainer(cache, cfg, labels, target, root, device, out, text_box_file, detect_text,
                    causal_steps, trust_remote_code)
    picked = choose_images(cache, ex.probes[0], choice, cfg.seed, ex.test)
    views = [_view(ex, i) for i in picked]  # a missing or changed file stops before any mask
    if ex.volumes:
        _log_volume_cost(ex, picked)
    images = []
    with progress_bar(f"rise {cache.model}", len(picked) * cfg.n_masks, unit="mask") as advance:
        for i, view in zip(picked, views):
            images.append(_explain_image(ex, i, view, advance))
    return _write_maps(ex, picked, images, probe_path(cache, ex.labels[0], out).name,
                       stage_dir(cache.path, cache.dataset, "rise", out), text_box_file)


def _write_maps(ex: _Explainer, picked: list[int], images: list[tuple], stem: str,
                out_dir: Path, text_box_file: Path | None) -> RiseMaps:
    """The overview figure, one figure per image, the maps (npz) and the numbers (CSV, JSON)."""
    cache, cfg = ex.cache, ex.cfg
    relpaths = [cache.relpaths[i] for i in picked]
    meta = provenance(stage="rise", model=cache.model, dataset=cache.dataset,
                      cache_key=cache.cache_key, rise=cfg.to_dict(), target=ex.target,
                      precision=ex.precision,
                      probes={label: p.info["path"] for label, p in zip(ex.labels, ex.probes)},
                      map="centred RISE map of the explained class",
                      causal_steps=ex.causal_steps,
                      causal_score="softmax probability of the explained class",
                      text_boxes=str(text_box_file) if text_box_file else
                      ("detector" if ex.detect_text else "dataset"))
    write_figures = _write_volume_figures if ex.volumes else _write_image_figures
    figure = write_figures(ex, relpaths, [row for *_, row in images], out_dir, stem, meta)
    maps_file = out_dir / f"{stem}.maps.npz"
    with written_beside(maps_file) as tmp, open(tmp, "wb") as f:
        arrays = {}
        for k, (_, m_input, m_original, row) in enumerate(images):
            arrays[f"input_{k}"] = m_input
            if ex.volumes:  # the maps stay in the input grid; its affine places them in RAS
                arrays[f"affine_{k}"] = row["affine"]
            else:
                arrays[f"original_{k}"] = m_original
        np.savez_compressed(f, relpaths=np.array(relpaths), probes=np.array(ex.labels), **arrays)
    records = [r for rows, _, _, _ in images for r in rows]
    table = out_dir / f"{stem}.csv"
    with written_beside(table) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    write_atomic(out_dir / f"{stem}.json", json.dumps(
        {"config": cfg.to_dict(), "images": records, "provenance": meta}, indent=2, default=str))
    keys = ("lesion_mass", "lesion_area", "text_mass", "text_area", "lesion_enrichment",
            "text_enrichment", "split_half_r", "random_probe_rank_r", "deletion_auc",
            "insertion_auc")
    by_probe = {label: {f"mean_{key}": m for key, m in means.items()}
                for label, means in means_by_probe(records, keys, ex.labels).items()}
    maps = RiseMaps(cache, cfg, ex.labels, relpaths, [m for _, m, _, _ in images],
                    [m for _, _, m, _ in images], records, by_probe, figure,
                    out_dir / f"{stem}.panels", table, maps_file)
    log.info(f"{cache.model} / {cache.dataset}: RISE overview {figure}, per-image panels "
             f"{maps.panels}, numbers {table}")
    return maps


def _figure_title(ex: _Explainer) -> str:
    cfg, cache = ex.cfg, ex.cache
    base = " (null baseline)" if cache.baseline else ""
    return (f"RISE: {cache.model}{base} + {ex.labels[0]} probe on {cache.dataset} "
            f"(N={cfg.n_masks} masks, s={cfg.s}, p={cfg.p:g}, fill={cfg.fill}"
            + (f", σ={cfg.blur_sigma:g}·side" if cfg.fill == "blur" else "") + ")")


def _write_image_figures(ex: _Explainer, relpaths: list[str], rows: list[dict], out_dir: Path,
                         stem: str, meta: dict) -> Path:
    """One figure per image (every map) and the overview (rows per true class)."""
    cache = ex.cache
    grid_rows = {name: [] for name in cache.label_view(_column(ex.labels[0]))[1]}
    for k, (rel, row) in enumerate(zip(relpaths, rows)):
        grid_rows[row["true"]].append(row)
        plot_rise_panels([row], out_dir / f"{stem}.panels" / f"{k:03d}-{_safe_name(rel)}",
                         f"RISE: {cache.model} on {cache.dataset}", {"relpath": rel})
    return plot_rise_grid(grid_rows, out_dir / stem, _figure_title(ex), meta)[0]


def _write_volume_figures(ex: _Explainer, relpaths: list[str], rows: list[dict], out_dir: Path,
                          stem: str, meta: dict) -> Path:
    """Per volume: every map as NIfTI and one figure (a row per map: orthogonal slices through
    the lesion); the overview: a row per volume with its first map."""
    from .volumes import plot_volume_rise, write_volume_map

    cache, overview = ex.cache, []
    for k, (rel, row) in enumerate(zip(relpaths, rows)):
        panel = out_dir / f"{stem}.panels" / f"{k:03d}-{_safe_name(rel)}"
        names = [*ex.labels, "random-probe"]
        for name, m in zip(names, row["maps"]):
            write_volume_map(m["saliency"], row["affine"],
                             panel.with_name(f"{panel.name}.{_safe_name(name)}.nii.gz"))
        view = {key: row[key] for key in ("volume", "spacing", "point", "mask")}
        plot_volume_rise([{**view, "saliency": m["saliency"],
                           "caption": f"{m['title']} ({m['cbar_label']})"} for m in row["maps"]],
                         panel, f"RISE: {cache.model} on {cache.dataset}: {row['caption']}",
                         {"relpath": rel})
        overview.append({**view, "saliency": row["maps"][0]["saliency"],
                         "caption": row["caption"]})
    return plot_volume_rise(overview, out_dir / stem, _figure_title(ex), meta)[0]


def means_by_probe(records: list[dict], keys, probes=None) -> dict[str, dict[str, float]]:
    """Per probe (``probes``, default: in the records' order), the mean of each of ``keys`` over
    its images' records, undefined values (None, NaN: e.g. no lesion mask) left out; NaN where
    none is left."""
    probes = probes or list(dict.fromkeys(r["probe"] for r in records))
    return {p: {k: _mean([r.get(k) for r in records if r["probe"] == p]) for k in keys}
            for p in probes}


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


def run_rise(caches=None, config: RiseConfig | None = None, *,
             choice: ImageChoice | None = None, labels: Sequence[str] = ("class",),
             target: str | None = None, root: str | Path | None = None, device: str = "auto",
             out: str | Path | None = None, text_boxes: str | Path | None = None,
             detect_text: bool = False, causal_steps: int = 50, include_baselines: bool = False,
             trust_remote_code: bool | None = None, tap: str | None = None,
             **options) -> RiseRun:
    """RISE saliency through each cache's encoder and saved probes (:func:`explain_cache`).

    ``caches``: as :func:`vlmprobe.cache.stage_inputs` takes them; null-baseline caches are
    left out unless ``include_baselines`` (or unless every cache is one). ``config``
    (:class:`RiseConfig`) holds the masks' settings; keyword ``options`` change single ones
    (``run_rise(caches, n_masks=1024)``). ``choice``: which images (:class:`ImageChoice`;
    default one held-out test image per class).
    """
    cfg = with_options(config or RiseConfig(), options).check()
    caches, out = stage_inputs(caches, out, tap)
    if not include_baselines:
        caches = [c for c in caches if not c.baseline] or caches
    return RiseRun([explain_cache(c, cfg, choice or ImageChoice(), labels, target, root, device,
                                  out, text_boxes, detect_text, causal_steps, trust_remote_code)
                    for c in caches])
