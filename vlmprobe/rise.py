"""RISE saliency for an opaque scorer (protocol.md §4; Petsiuk, Das & Saenko, BMVC 2018).

The black box is any ``score_fn(pixels [b, 3, H, W]) -> [b, C]``; in vlmprobe it is encoder ->
scaler -> linear SVM decision values (``lambda b: probe.decision_function(enc.encode_images(b))``).
Masks are drawn from one seeded ``torch.Generator`` up front (only the tiny s x s grids and the
shifts), then upsampled chunk by chunk, so a map depends on the seed and never on ``batch_size``,
and memory stays at one chunk of full-size masks. Saliency is accumulated in float64 on the CPU.

Besides the map, every result carries a split-half reliability (Pearson r between the centred maps
from the first and second half of the masks) so an under-sampled map is visible as such, and the
helpers below turn "looks at the text, not the lesion" into numbers (mass in a region, pointing
game, deletion/insertion AUC) and draw publication panels in original-image coordinates.
"""
from __future__ import annotations

import csv
import json
import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from PIL import Image

from . import paths
from .cache import Cache
from .datasets import file_digest, read_sample, sample_file
from .figures import STYLE, plt, save_figure
from .probe import LinearProbe, probe_path
from .progress import progress_bar
from .provenance import provenance
from .splits import read_split
from .validation import VlmprobeError

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _param_error(name: str, allowed: str, value) -> VlmprobeError:
    return VlmprobeError(f"The {name!r} parameter of RiseConfig must be {allowed}. "
                         f"Got {value!r} instead.")


@dataclass(frozen=True)
class RiseConfig:
    """RISE choices, all recorded with every map (protocol.md §4 lists why each matters).

    fill: what a masked pixel becomes. ``"mean"`` multiplies the normalized tensor (eclique/RISE),
    i.e. fills with the dataset mean colour; ``"black"`` fills with raw 0, whose normalized value
    (``(0 - mean) / std`` per channel) the caller passes as ``fill_value``.
    score: ``"decision"`` (raw SVM decision values) or ``"softmax"`` over the classes of them.
    """

    n_masks: int = 4096
    s: int = 8
    p: float = 0.5
    fill: str = "mean"
    score: str = "decision"
    seed: int = 0
    batch_size: int = 64

    def check(self) -> "RiseConfig":
        """sklearn-style parameter validation, run by the functions that use the config."""
        ints = {"n_masks": 2, "s": 2, "seed": 0, "batch_size": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                raise _param_error(name, f"an int in the range [{low}, inf)", v)
        if not isinstance(self.p, numbers.Real) or isinstance(self.p, bool) or not 0 < self.p < 1:
            raise _param_error("p", "a float in the range (0, 1)", self.p)
        for name, options in (("fill", ("mean", "black")), ("score", ("decision", "softmax"))):
            if getattr(self, name) not in options:
                raise _param_error(name, f"one of {options}", getattr(self, name))
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RiseResult:
    """One image's RISE maps for all C classes, in model-input coordinates.

    ``saliency`` is the paper's map, sum_i score_c(masked_i) * mask_i / (N p). It carries an
    offset of about ``mean_score[c]`` (because E[mask] = p) on top of the informative variation;
    :meth:`centred` removes it exactly, which is what mass-based metrics need.
    """

    saliency: np.ndarray      # float32 [C, H, W]
    split_half_r: np.ndarray  # float64 [C], NaN where a half-map is constant
    n_masks: int
    config: dict
    base_scores: np.ndarray   # [C], score of the unmasked image (same score mode as the map)
    mean_score: np.ndarray    # [C], mean score over the masked images
    coverage: np.ndarray      # float32 [H, W], sum_i mask_i / (N p): ~1, the map's sampling density

    def centred(self) -> np.ndarray:
        """sum_i (score_c,i - mean score_c) mask_i / (N p): > 0 where keeping a pixel raises the
        score above its average under masking, < 0 where it lowers it."""
        return (self.saliency - self.mean_score[:, None, None] * self.coverage).astype(np.float32)


def iter_masks(cfg: RiseConfig, size: tuple[int, int]) -> Iterator[torch.Tensor]:
    """Yield float masks [b, 1, H, W] in [0, 1], b <= batch_size, n_masks in all (CPU).

    Petsiuk et al.: a binary s x s grid with keep probability p, bilinearly upsampled to
    (s + 1) * ceil(H / s) per axis and cropped to H x W at a random shift within one cell, so the
    smooth masks are not aligned to the grid. All grids and shifts come from one generator before
    any chunk is built: mask i is the same whatever the batch size. Bilinear upsampling is
    separable, so upsample-then-crop is ``Ry @ grid @ Rx.T`` with the cropped rows of 1-D
    interpolation matrices: two batched matmuls per chunk instead of b full-size upsamples and
    crops (many small ops are slow on a shared CPU).
    """
    cfg.check()
    h, w = size
    cell = (math.ceil(h / cfg.s), math.ceil(w / cfg.s))
    gen = torch.Generator().manual_seed(cfg.seed)
    grids = (torch.rand(cfg.n_masks, cfg.s, cfg.s, generator=gen) < cfg.p).float()
    dy = torch.randint(0, cell[0], (cfg.n_masks, 1), generator=gen) + torch.arange(h)
    dx = torch.randint(0, cell[1], (cfg.n_masks, 1), generator=gen) + torch.arange(w)
    # [(s + 1) * cell, s]: the weights F.interpolate(..., "bilinear", align_corners=False) uses
    ry, rx = (F.interpolate(torch.eye(cfg.s)[None], size=(cfg.s + 1) * c, mode="linear",
                            align_corners=False)[0].T for c in cell)
    for start in range(0, cfg.n_masks, cfg.batch_size):
        b = slice(start, start + cfg.batch_size)
        masks = ry[dy[b]] @ grids[b] @ rx[dx[b]].transpose(1, 2)
        yield masks.clamp_(0, 1)[:, None]  # float rounding can overshoot 1 by an ulp


def _fill(cfg: RiseConfig, fill_value, pixels: torch.Tensor) -> torch.Tensor:
    """The per-channel value [3, 1, 1] (normalized space) that masked pixels take."""
    if cfg.fill == "mean":
        if fill_value is not None:
            raise VlmprobeError("fill_value is only used with fill='black'; with fill='mean' "
                                "masked pixels are 0 in normalized space (the mean colour).")
        return torch.zeros(pixels.shape[0], 1, 1, dtype=pixels.dtype, device=pixels.device)
    if fill_value is None:
        raise VlmprobeError("fill='black' needs fill_value: the normalized value of a raw 0 pixel, "
                            "(0 - mean) / std per channel of the model's preprocessing.")
    value = torch.as_tensor(fill_value, dtype=pixels.dtype, device=pixels.device).reshape(-1, 1, 1)
    if value.shape[0] not in (1, pixels.shape[0]):
        raise VlmprobeError(f"fill_value must have 1 or {pixels.shape[0]} values (one per "
                            f"channel); got {value.shape[0]}.")
    return value


def _scorer(score_fn: ScoreFn, cfg: RiseConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """score_fn in the config's score mode, as float64 [b, C] on the CPU."""
    def scores(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = score_fn(batch)
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise VlmprobeError(f"score_fn must return [batch, n_classes]; for a batch of "
                                f"{batch.shape[0]} it returned shape {tuple(out.shape)}.")
        out = out.detach().to("cpu", torch.float64)
        return out.softmax(dim=1) if cfg.score == "softmax" else out
    return scores


def _check_pixels(pixels: torch.Tensor) -> None:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 3:
        raise VlmprobeError("pixels must be one preprocessed image, a tensor [3, H, W]; got "
                            f"{getattr(pixels, 'shape', type(pixels).__name__)}.")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def rise_saliency(score_fn: ScoreFn, pixels: torch.Tensor, cfg: RiseConfig = RiseConfig(),
                  fill_value=None, progress: Callable[[int], None] | None = None) -> RiseResult:
    """RISE maps of one preprocessed image [3, H, W] for every class ``score_fn`` returns.

    masked_i = pixels * mask_i + fill * (1 - mask_i); saliency_c = sum_i score_c(masked_i) *
    mask_i / (N p). ``progress(n)`` is called with the number of masks just scored (a
    :func:`vlmprobe.progress.progress_bar` ``advance`` fits). ``split_half_r`` is the Pearson r
    of the centred maps (:meth:`RiseResult.centred`) from masks [0, N/2) and [N/2, N): the
    reliability of the spatial pattern at half the masks (Spearman-Brown 2r / (1 + r) estimates it
    at N). Centred, because the raw map adds mean_score x coverage noise that carries no
    information about the model.
    """
    cfg.check()
    _check_pixels(pixels)
    fill = _fill(cfg, fill_value, pixels)
    scores = _scorer(score_fn, cfg)
    _, h, w = pixels.shape
    base = scores(pixels[None])[0]
    # per half k of the masks: sum_i s_i mask_i, sum_i s_i, sum_i mask_i
    sm = torch.zeros(2, base.numel(), h * w, dtype=torch.float64)
    s_sum = torch.zeros(2, base.numel(), dtype=torch.float64)
    m_sum = torch.zeros(2, h * w, dtype=torch.float64)
    done = 0
    for masks in iter_masks(cfg, (h, w)):
        m = masks.to(pixels.device, pixels.dtype)
        s = scores(((pixels - fill) * m).add_(fill))                # [b, C]
        flat = masks.reshape(len(masks), -1).double()              # [b, H*W]
        cut = min(max(cfg.n_masks // 2 - done, 0), len(masks))     # first index of half 2
        for k, sel in enumerate((slice(0, cut), slice(cut, None))):
            sm[k] += s[sel].T @ flat[sel]
            s_sum[k] += s[sel].sum(0)
            m_sum[k] += flat[sel].sum(0)
        done += len(masks)
        if progress is not None:
            progress(len(masks))
    n_half = torch.tensor([cfg.n_masks // 2, cfg.n_masks - cfg.n_masks // 2], dtype=torch.float64)
    centred_halves = sm - (s_sum / n_half[:, None])[:, :, None] * m_sum[:, None, :]
    r = np.array([_pearson(centred_halves[0, c].numpy(), centred_halves[1, c].numpy())
                  for c in range(base.numel())])
    norm = cfg.n_masks * cfg.p
    return RiseResult(saliency=(sm.sum(0) / norm).reshape(-1, h, w).numpy().astype(np.float32),
                      split_half_r=r, n_masks=cfg.n_masks,
                      config=cfg.to_dict() | {"fill_value": fill.flatten().cpu().tolist()},
                      base_scores=base.numpy(), mean_score=(s_sum.sum(0) / cfg.n_masks).numpy(),
                      coverage=(m_sum.sum(0) / norm).reshape(h, w).numpy().astype(np.float32))


def deletion_insertion_auc(score_fn: ScoreFn, pixels: torch.Tensor, saliency_map: np.ndarray,
                           target: int, cfg: RiseConfig = RiseConfig(), fill_value=None,
                           steps: int = 50) -> dict[str, float]:
    """RISE's causal metrics for one map (Petsiuk et al. §4.1), in the config's score mode.

    Pixels are ranked by ``saliency_map`` [H, W] (input coordinates). Deletion replaces the top
    fraction t with the fill, insertion starts from the all-fill image and reveals the top
    fraction t, t = 0, 1/steps, ..., 1; each AUC is the trapezoid mean of ``target``'s score over
    t. Good maps: low deletion, high insertion. The paper's insertion starts from a blurred image;
    here both use the RISE fill, so the three numbers share one notion of "removed".
    """
    cfg.check()
    _check_pixels(pixels)
    if not isinstance(steps, numbers.Integral) or steps < 1:
        raise VlmprobeError(f"steps must be an int >= 1; got {steps!r}.")
    _, h, w = pixels.shape
    sal = np.asarray(saliency_map, dtype=np.float64)
    if sal.shape != (h, w):
        raise VlmprobeError(f"saliency_map has shape {sal.shape}; the pixels are {h} x {w}.")
    fill = _fill(cfg, fill_value, pixels)
    scores = _scorer(score_fn, cfg)
    rank = np.empty(h * w, dtype=np.int64)
    rank[np.argsort(-sal.ravel(), kind="stable")] = np.arange(h * w)
    rank = torch.as_tensor(rank.reshape(h, w), device=pixels.device)
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(int)
    out = {}
    for name, keep_top in (("deletion", False), ("insertion", True)):
        curve = []
        for start in range(0, len(counts), cfg.batch_size):
            top = torch.stack([rank < int(n) for n in counts[start:start + cfg.batch_size]])
            keep = (top if keep_top else ~top)[:, None].to(pixels.dtype)
            curve.append(scores(((pixels - fill) * keep).add_(fill))[:, target])
        out[name] = float(np.trapezoid(torch.cat(curve).numpy(), dx=1.0 / steps))
    return out


def _region_inputs(map_orig, region_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sal = np.asarray(map_orig, dtype=np.float64)
    region = np.asarray(region_mask, dtype=bool)
    if sal.shape != region.shape:
        raise VlmprobeError(f"saliency map {sal.shape} and region mask {region.shape} differ in "
                            "shape; carry the map to original coordinates (InputGeometry."
                            "to_original) before scoring it against a mask drawn on the image.")
    return sal, region, np.isfinite(sal)


def mass_in_region(map_orig: np.ndarray, region_mask: np.ndarray) -> float:
    """Fraction of the positive saliency mass that lies inside ``region_mask``; NaN pixels (never
    seen by the model) are ignored. NaN when the map has no positive mass.

    Pass a centred map (:meth:`RiseResult.centred`): the raw RISE map sits on an offset of about
    the mean score, which would make this mostly measure the region's area.
    """
    sal, region, seen = _region_inputs(map_orig, region_mask)
    pos = np.where(seen, np.clip(sal, 0, None), 0.0)
    total = pos.sum()
    return float(pos[region].sum() / total) if total > 0 else float("nan")


def pointing_game(map_orig: np.ndarray, region_mask: np.ndarray) -> bool:
    """Whether the map's maximum (over seen pixels) falls inside ``region_mask`` (Zhang et al.)."""
    sal, region, seen = _region_inputs(map_orig, region_mask)
    if not seen.any():
        raise VlmprobeError("The saliency map is NaN everywhere: the model saw none of the image.")
    return bool(region.ravel()[np.nanargmax(np.where(seen, sal, np.nan))])


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return image if image.ndim == 2 else image[..., :3].mean(-1)


def _outline(ax, row: dict) -> None:
    """Lesion contour and text box, drawn the same on both panels of a row."""
    if row.get("mask") is not None:
        ax.contour(np.asarray(row["mask"], dtype=float), levels=[0.5], colors="#00e5ff",
                   linewidths=1.2)
    if row.get("text_box") is not None:
        x0, y0, x1, y1 = row["text_box"]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="#ffd400", linestyle="--", linewidth=1.2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)


def plot_rise_panels(rows: Sequence[dict], path: str | Path, title: str,
                     metadata: dict | None = None) -> list[Path]:
    """One row per image: the image, then its saliency over the grayscale image, both in
    original-image coordinates, so lesion mask and text box line up with what was scored.

    Row keys: ``image`` (uint8 [h, w] or [h, w, 3]), ``saliency`` (float [h, w], NaN where the
    model never saw the image: drawn hatched grey), ``caption``; optional ``mask`` (bool [h, w],
    cyan contour), ``text_box`` ((x0, y0, x1, y1), pixel bounds as in slicing, dashed yellow)
    and ``cbar_label``. Writes ``<path>.png`` (``metadata`` as JSON in its Description) and
    ``<path>.svg``; returns both paths.
    """
    if not rows:
        raise VlmprobeError("plot_rise_panels needs at least one row.")
    path = Path(path)
    path = path.with_suffix("") if path.suffix in (".png", ".svg") else path
    with plt.rc_context({**STYLE, "savefig.dpi": 150, "hatch.color": "0.35"}):
        fig = plt.figure(figsize=(6.4, 3.1 * len(rows) + 0.5), layout="constrained")
        subfigs = np.atleast_1d(fig.subfigures(len(rows), 1))
        for sub, row in zip(subfigs, rows):
            sal = np.asarray(row["saliency"], dtype=float)
            image = np.asarray(row["image"])
            if sal.shape != image.shape[:2]:
                raise VlmprobeError(f"Row {row.get('caption', '')!r}: saliency {sal.shape} and "
                                    f"image {image.shape[:2]} differ; use original coordinates.")
            ax_img, ax_sal = sub.subplots(1, 2)
            ax_img.imshow(image, cmap="gray", vmin=0, vmax=255)  # uint8: no contrast stretch
            ax_img.set_title("image")
            ax_sal.imshow(_gray(image), cmap="gray", vmin=0, vmax=255)
            finite = sal[np.isfinite(sal)]
            lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
            im = ax_sal.imshow(np.ma.masked_invalid(sal), cmap="inferno", alpha=0.6,
                               vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
            unseen = ~np.isfinite(sal)
            if unseen.any():
                ax_sal.imshow(np.ma.masked_where(~unseen, np.ones_like(sal)), cmap="Greys",
                              vmin=0, vmax=2.5, alpha=0.7)
                ax_sal.contourf(unseen.astype(float), levels=[0.5, 1.5], colors="none",
                                hatches=["////"])
            ax_sal.set_title("RISE saliency")
            sub.colorbar(im, ax=ax_sal, shrink=0.85, label=row.get("cbar_label", "saliency"))
            for ax in (ax_img, ax_sal):
                _outline(ax, row)
            sub.suptitle(row["caption"], fontsize=9)
        handles = [Line2D([], [], color="#00e5ff", lw=1.2, label="lesion mask"),
                   Line2D([], [], color="#ffd400", lw=1.2, ls="--", label="text box"),
                   Patch(facecolor="0.75", hatch="////", edgecolor="0.35",
                         label="not seen by the model")]
        present = [any(r.get("mask") is not None for r in rows),
                   any(r.get("text_box") is not None for r in rows),
                   any(not np.isfinite(np.asarray(r["saliency"], float)).all() for r in rows)]
        if any(present):
            fig.legend(handles=[h for h, p in zip(handles, present) if p],
                       loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle(title, fontsize=10, fontweight="bold")
        return save_figure(fig, path, metadata)


# -- the stage: caches + saved probes -> maps on original images, numbers, figures ----------
def _dataset_root(cache: Cache, root: Path | None) -> Path:
    if root is not None:
        return Path(root)
    hint = cache.attrs.get("dataset_root")
    return Path(hint) if hint and Path(hint).is_dir() else paths.data_root(cache.dataset)


def _pick_test_images(cache: Cache, split_file: Path, n: int, seed: int) -> list[int]:
    """Seeded choice of held-out test images, taking the classes in turn so each is shown."""
    split = read_split(split_file)
    test = {r for r, t in zip(split.relpaths, split.test) if t}
    rng = np.random.default_rng(seed)
    queues = []
    for c in range(len(cache.class_names)):
        idx = [i for i, r in enumerate(cache.relpaths) if r in test and cache.labels[i] == c]
        queues.append(list(rng.permutation(idx)))
    picked = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop(0)))
    return picked


def _region_masks(cache: Cache, i: int, root: Path, size: tuple[int, int]):
    """Lesion mask (union of the image's mask files) and burnt-in text box, where known."""
    meta = {k: v[i] for k, v in cache.metadata.items()}
    lesion = None
    mask_files = [m for m in meta.get("mask_paths", "").split(";") if m]
    for m in mask_files:
        arr = np.asarray(Image.open(root / m).convert("L")) > 127
        lesion = arr if lesion is None else lesion | arr
    box = None
    if meta.get("text_x0", ""):
        box = tuple(int(float(meta[f"text_{k}"])) for k in ("x0", "y0", "x1", "y1"))
    return (lesion if lesion is not None and lesion.any() else None), box


def _box_mask(box, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box
    m[max(y0, 0):y1, max(x0, 0):x1] = True
    return m


def explain_cache(cache: Cache, cfg: RiseConfig, n_images: int = 3, root: Path | None = None,
                  device: str = "auto", out: Path | None = None, log=print) -> dict:
    """RISE on ``n_images`` test images through the cache's encoder and its saved class probe."""
    from .encoders import load_encoder

    probe = LinearProbe.load(probe_path(cache, "class", out))
    if probe.info.get("cache_key") != cache.cache_key:
        raise VlmprobeError(f"The saved probe for {cache.path} was fitted on another cache; re-run "
                            "`vlmprobe probe` on it first.")
    encoder = load_encoder(cache.model, device)
    if encoder.weights_sha256_ != cache.attrs["encoder"]["weights_sha256"]:
        raise VlmprobeError(f"The weights of {cache.model!r} differ from those that made "
                            f"{cache.path}; re-extract the cache (vlmprobe extract --force).")
    root = _dataset_root(cache, root)
    digests = dict(zip(cache.files["relpath"], cache.files["digest"]))
    mean = torch.tensor(encoder.preprocess_cfg.mean).view(3, 1, 1)
    std = torch.tensor(encoder.preprocess_cfg.std).view(3, 1, 1)
    fill_value = (-mean / std).to(encoder.device) if cfg.fill == "black" else None

    def score_fn(batch):
        return probe.decision_function(encoder.encode_images(batch))

    picked = _pick_test_images(cache, Path(probe.info["split_file"]), n_images, cfg.seed)
    rows, records, maps = [], [], {}
    with progress_bar(f"rise {cache.model}", len(picked) * cfg.n_masks, unit="mask") as advance:
        for i in picked:
            rel = cache.relpaths[i]
            path = root / sample_file(rel)
            if not path.is_file() or file_digest(path) != digests[rel]:
                raise VlmprobeError(f"{path} is missing or differs from the file {cache.path} was "
                                    "extracted from; pass --root pointing at that dataset copy.")
            image = read_sample(root, rel, cache.attrs["dataset_entry"].get("dicom_window", "tags"))
            pixels = encoder.transform_(image).to(encoder.device)
            res = rise_saliency(score_fn, pixels, cfg, fill_value, progress=advance)
            target = int(np.argmax(res.base_scores))
            geometry = encoder.geometry(*image.size)
            sal = geometry.to_original(res.centred()[target])
            lesion, box = _region_masks(cache, i, root, image.size)
            text = _box_mask(box, image.size) if box else None
            rec = {"relpath": rel, "true": cache.class_names[cache.labels[i]],
                   "predicted": probe.class_names[target], "score": float(res.base_scores[target]),
                   "split_half_r": float(res.split_half_r[target]),
                   "unseen_fraction": geometry.unseen_fraction,
                   "lesion_mass": mass_in_region(sal, lesion) if lesion is not None else None,
                   "lesion_area": float(lesion.mean()) if lesion is not None else None,
                   "lesion_pointing": pointing_game(sal, lesion) if lesion is not None else None,
                   "text_mass": mass_in_region(sal, text) if text is not None else None,
                   "text_area": float(text.mean()) if text is not None else None,
                   "text_pointing": pointing_game(sal, text) if text is not None else None}
            for region in ("lesion", "text"):  # > 1: the evidence concentrates on the region
                mass, area = rec[f"{region}_mass"], rec[f"{region}_area"]
                rec[f"{region}_enrichment"] = mass / area if mass is not None and area else None
            records.append(rec)
            maps[rel] = res.centred()[target]
            parts = [f"{rel}: true {rec['true']}, predicted {rec['predicted']}",
                     f"split-half r = {rec['split_half_r']:.2f}"]
            for region in ("lesion", "text"):
                if rec[f"{region}_mass"] is not None:
                    parts.append(f"{region}: {100 * rec[f'{region}_mass']:.0f}% of saliency "
                                 f"on {100 * rec[f'{region}_area']:.0f}% of the image")
            rows.append({"image": np.asarray(image), "saliency": sal, "mask": lesion,
                         "text_box": box, "caption": "; ".join(parts),
                         "cbar_label": f"RISE saliency of '{rec['predicted']}' (centred)"})
    out_dir = paths.stage_dir(cache.path, cache.dataset, "rise", out)
    meta = provenance(stage="rise", model=cache.model, dataset=cache.dataset,
                      cache_key=cache.cache_key, probe=probe_path(cache, "class", out).as_posix(),
                      rise=cfg.to_dict(), map="centred RISE map of the predicted class")
    base = " (null baseline)" if cache.baseline else ""
    figure = plot_rise_panels(rows, out_dir / cache.model,
                              f"RISE: {cache.model}{base} + linear probe on {cache.dataset} "
                              f"(N={cfg.n_masks} masks, s={cfg.s}, p={cfg.p:g}, fill={cfg.fill})",
                              meta)[0]
    np.savez(out_dir / f"{cache.model}.maps.npz", **{f"map{k}": m for k, m in enumerate(maps.values())},
             relpaths=np.array(list(maps)))
    table = out_dir / f"{cache.model}.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    (out_dir / f"{cache.model}.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "images": records, "provenance": meta}, indent=2, default=str))

    def mean_of(key):
        vals = [r[key] for r in records if r[key] is not None]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {"model": cache.model, "n_images": len(records), "n_masks": cfg.n_masks,
               "figure": figure, "table": table,
               **{f"mean_{k}": mean_of(k) for k in ("lesion_mass", "lesion_area", "text_mass",
                                                    "text_area", "lesion_enrichment",
                                                    "text_enrichment", "split_half_r")}}
    log(f"{cache.model} / {cache.dataset}: RISE panels {figure}, numbers {table}")
    return summary


def rise_caches(caches: list[Cache], cfg: RiseConfig = RiseConfig(), n_images: int = 3,
                root: Path | None = None, device: str = "auto", out: Path | None = None,
                log=print) -> list[dict]:
    return [explain_cache(c, cfg.check(), n_images, root, device, out, log) for c in caches]
