"""The RISE stage: caches + saved probes -> maps on original images, region numbers, sanity
checks, figures."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..cache import Cache, stage_dir
from ..data import file_digest, images_root, read_sample, sample_file
from ..data.splits import read_split
from ..encoders.transforms import input_transform
from ..extraction.batches import check_precision, precision_autocast
from ..probe import LinearProbe, probe_path
from ..progress import progress_bar
from ..provenance import provenance
from ..validation import VlmprobeError
from .figures import plot_rise_grid, plot_rise_panels
from .saliency import (
    RiseConfig,
    deletion_insertion_auc,
    mass_in_region,
    pointing_game,
    rise_saliency,
)
from .text_boxes import Box, boxes_mask, detect_text_boxes, read_box_file


# -- the stage: caches + saved probes -> maps on original images, numbers, figures ----------
@dataclass(frozen=True)
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

    encoder = load_encoder(cache.model.partition("@")[0], device,
                           trust_remote_code=trust_remote_code)
    if encoder.weights_sha256_ != cache.attrs["encoder"]["weights_sha256"]:
        raise VlmprobeError(f"The weights of {cache.model!r} differ from those that made "
                            f"{cache.path}; re-extract the cache (vlmprobe extract --force).")
    return encoder, cache.tap or encoder.entry.tap


def _cache_precision(cache: Cache, device: torch.device) -> str:
    """The precision the cache was extracted at (fp32 | fp16 | bf16), which RISE encodes in, so
    the probe scores the kind of embedding it was fitted on; fp16 runs on a GPU only."""
    precision = cache.attrs.get("precision", "fp32")
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


def explain_cache(cache: Cache, cfg: RiseConfig = RiseConfig(), choice: ImageChoice = ImageChoice(),
                  labels: Sequence[str] = ("class",), target: str | None = None,
                  root: Path | None = None, device: str = "auto", out: Path | None = None,
                  text_box_file: Path | None = None, detect_text: bool = False,
                  causal_steps: int = 50, trust_remote_code: bool | None = None,
                  log=print) -> dict:
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
    from scipy.stats import spearmanr


    cfg.check()
    labels = list(dict.fromkeys(labels))
    probes = [_load_probe(cache, label, out) for label in labels]
    if target is not None and target not in probes[0].class_names:
        raise VlmprobeError(f"--target {target!r} is not a class of the {labels[0]!r} probe; "
                            f"classes: {', '.join(probes[0].class_names)}.")
    heads = probes + [random_probe(probes[0], cfg.seed)]
    widths = [len(p.class_names) for p in heads]
    offsets = np.cumsum([0] + widths)
    box_file = read_box_file(text_box_file) if text_box_file is not None else None
    test = _test_relpaths(probes[0])
    picked = choose_images(cache, probes[0], choice, cfg.seed, test)

    encoder, tap = cache_encoder(cache, device, trust_remote_code)
    precision = _cache_precision(cache, encoder.device)
    root = images_root(cache, root)
    window = cache.attrs["dataset_entry"].get("dicom_window", "tags")
    intensity = cache.attrs["dataset_entry"].get("intensity", "8bit")
    transform = input_transform(encoder, intensity)  # a float cache is explained on float input
    digests = dict(zip(cache.files["relpath"], cache.files["digest"]))
    fill_value = black_fill_value(encoder) if cfg.fill == "black" else None
    truth = [cache.label_view(_column(label)) for label in labels]

    def score_fn(batch):  # in the cache's precision: the embeddings the probe was fitted on
        with precision_autocast(encoder.device, precision):
            emb = encoder.encode_taps(batch, [tap])[tap]
        return torch.cat([p.decision_function(emb) for p in heads], dim=1)

    def primary_scores(batch):
        return score_fn(batch)[:, :widths[0]]

    stem = probe_path(cache, labels[0], out).name
    out_dir = stage_dir(cache.path, cache.dataset, "rise", out)
    records, saved = [], {}
    grid_rows = {name: [] for name in truth[0][1]}
    with progress_bar(f"rise {cache.model}", len(picked) * cfg.n_masks, unit="mask") as advance:
        for k, i in enumerate(picked):
            rel = cache.relpaths[i]
            path = root / sample_file(rel)
            if not path.is_file() or file_digest(path) != digests[rel]:
                raise VlmprobeError(f"{path} is missing or differs from the file {cache.path} was "
                                    "extracted from; pass --root pointing at that dataset copy.")
            image = read_sample(root, rel, window)  # 8-bit: drawn, and where text is sought
            pixels = transform(image if intensity == "8bit"
                               else read_sample(root, rel, window, intensity)).to(encoder.device)
            res = rise_saliency(score_fn, pixels, cfg, fill_value, progress=advance,
                                groups=widths)
            geometry = encoder.geometry(*image.size)
            lesion = _lesion_mask(cache, i, root, image.size)
            boxes, box_source = _text_boxes(cache, i, image, box_file, detect_text)
            text = boxes_mask(boxes, image.size) if boxes else None
            centred = res.centred()
            targets = [probes[0].class_names.index(target) if target is not None
                       else int(np.argmax(res.base_scores[offsets[0]:offsets[1]]))]
            targets += [int(np.argmax(res.base_scores[offsets[j]:offsets[j + 1]]))
                        for j in range(1, len(probes))]
            maps_in = [centred[offsets[j] + t] for j, t in enumerate(targets)]
            random_in = centred[offsets[len(probes)] + targets[0]]
            rank_r = float(spearmanr(maps_in[0].ravel(), random_in.ravel()).statistic)
            maps_orig = [geometry.to_original(m) for m in maps_in]
            causal = ({f"{name}_auc": v for name, v in deletion_insertion_auc(
                primary_scores, pixels, maps_in[0], targets[0], replace(cfg, score="softmax"),
                fill_value, steps=causal_steps).items()} if causal_steps else {})
            split_name = "test" if rel in test else "train"
            for j, (label, probe) in enumerate(zip(labels, probes)):
                y, names, _ = truth[j]
                c = offsets[j] + targets[j]
                records.append({
                    "relpath": rel, "split": split_name, "probe": label, "true": names[y[i]],
                    "target": probe.class_names[targets[j]],
                    "predicted": probe.class_names[int(np.argmax(
                        res.base_scores[offsets[j]:offsets[j + 1]]))],
                    "score": float(res.base_scores[c]), "split_half_r": float(res.split_half_r[c]),
                    "unseen_fraction": geometry.unseen_fraction,
                    **_region_numbers(maps_orig[j], lesion, "lesion"),
                    **_region_numbers(maps_orig[j], text, "text"), "text_box_source": box_source,
                    "random_probe_rank_r": rank_r if j == 0 else None,
                    "deletion_auc": causal.get("deletion_auc") if j == 0 else None,
                    "insertion_auc": causal.get("insertion_auc") if j == 0 else None})
            first = records[-len(probes)]
            log(f"  {rel}: true {first['true']}, explained {first['target']}; split-half r = "
                f"{first['split_half_r']:.2f}; rank r with a random-weight probe's map = "
                f"{rank_r:.2f}")
            maps = [{"saliency": m, "title": f"{label}: {probes[j].class_names[targets[j]]}",
                     "cbar_label": "centred RISE saliency"}
                    for j, (label, m) in enumerate(zip(labels, maps_orig))]
            maps.append({"saliency": geometry.to_original(random_in),
                         "title": "random-weight probe (sanity check)",
                         "cbar_label": f"rank r with trained map = {rank_r:.2f}"})
            row = {"image": np.asarray(image), "maps": maps, "mask": lesion, "text_boxes": boxes,
                   "caption": f"{rel}: true {first['true']}, predicted {first['predicted']}, "
                              f"split-half r = {first['split_half_r']:.2f}",
                   "short_caption": f"pred. {first['predicted']}" + (
                       f" · text {100 * first['text_mass']:.0f}%"
                       if first["text_mass"] is not None else "")}
            grid_rows[first["true"]].append(row)
            plot_rise_panels([row], out_dir / f"{stem}.panels" / f"{k:03d}-{_safe_name(rel)}",
                             f"RISE: {cache.model} on {cache.dataset}", {"relpath": rel})
            saved[f"input_{k}"] = np.stack(maps_in)
            saved[f"original_{k}"] = np.stack(maps_orig).astype(np.float32)

    meta = provenance(stage="rise", model=cache.model, dataset=cache.dataset,
                      cache_key=cache.cache_key, rise=cfg.to_dict(), target=target,
                      precision=precision,
                      probes={label: p.info["path"] for label, p in zip(labels, probes)},
                      map="centred RISE map of the explained class", causal_steps=causal_steps,
                      causal_score="softmax probability of the explained class",
                      text_boxes=str(text_box_file) if text_box_file else
                      ("detector" if detect_text else "dataset"))
    base = " (null baseline)" if cache.baseline else ""
    figure = plot_rise_grid(grid_rows, out_dir / stem,
                            f"RISE: {cache.model}{base} + {labels[0]} probe on {cache.dataset} "
                            f"(N={cfg.n_masks} masks, s={cfg.s}, p={cfg.p:g}, fill={cfg.fill}"
                            + (f", σ={cfg.blur_sigma:g}·side" if cfg.fill == "blur" else "") + ")",
                            meta)[0]
    np.savez_compressed(out_dir / f"{stem}.maps.npz", relpaths=np.array([cache.relpaths[i]
                        for i in picked]), probes=np.array(labels), **saved)
    table = out_dir / f"{stem}.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    (out_dir / f"{stem}.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "images": records, "provenance": meta}, indent=2, default=str))

    keys = ("lesion_mass", "lesion_area", "text_mass", "text_area", "lesion_enrichment",
            "text_enrichment", "split_half_r", "random_probe_rank_r", "deletion_auc",
            "insertion_auc")
    by_probe = {label: {f"mean_{key}": _mean([r[key] for r in records if r["probe"] == label])
                        for key in keys} for label in labels}
    summary = {"model": cache.model, "n_images": len(picked), "n_masks": cfg.n_masks,
               "figure": figure, "panels": out_dir / f"{stem}.panels", "table": table,
               "records": records, "by_probe": by_probe, **by_probe[labels[0]]}
    log(f"{cache.model} / {cache.dataset}: RISE overview {figure}, per-image panels "
        f"{summary['panels']}, numbers {table}")
    return summary


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


def rise_caches(caches: list[Cache], cfg: RiseConfig = RiseConfig(), **kwargs) -> list[dict]:
    """:func:`explain_cache` on each cache (same options)."""
    return [explain_cache(c, cfg.check(), **kwargs) for c in caches]
