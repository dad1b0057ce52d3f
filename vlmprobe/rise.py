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
from dataclasses import asdict, dataclass, replace
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
from .text_boxes import Box, boxes_mask, detect_text_boxes, read_box_file
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
    (``(0 - mean) / std`` per channel) the caller passes as ``fill_value``; ``"blur"`` takes the
    pixel from a Gaussian-blurred copy of the image (Fong & Vedaldi's "meaningful perturbation",
    ICCV 2017): removes detail without pasting a flat block the encoder never saw in training.
    blur_sigma: the blur's sigma as a fraction of the input's shorter side (used by ``"blur"``
    only); 0.045 is Fong & Vedaldi's sigma of 10 px at 224 px.
    score: ``"decision"`` (raw SVM decision values) or ``"softmax"`` over the classes of them.
    """

    n_masks: int = 4096
    s: int = 8
    p: float = 0.5
    fill: str = "mean"
    score: str = "decision"
    blur_sigma: float = 0.045
    seed: int = 0
    batch_size: int | None = None  # None: chosen for the device (the maps do not depend on it)

    def check(self) -> "RiseConfig":
        """sklearn-style parameter validation, run by the functions that use the config."""
        ints = {"n_masks": 2, "s": 2, "seed": 0, "batch_size": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if name == "batch_size" and v is None:
                continue
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                raise _param_error(name, f"an int in the range [{low}, inf)", v)
        if not isinstance(self.p, numbers.Real) or isinstance(self.p, bool) or not 0 < self.p < 1:
            raise _param_error("p", "a float in the range (0, 1)", self.p)
        if (not isinstance(self.blur_sigma, numbers.Real) or isinstance(self.blur_sigma, bool)
                or not 0 < self.blur_sigma <= 1):
            raise _param_error("blur_sigma", "a float in the range (0, 1]", self.blur_sigma)
        for name, options in (("fill", ("mean", "black", "blur")),
                              ("score", ("decision", "softmax"))):
            if getattr(self, name) not in options:
                raise _param_error(name, f"one of {options}", getattr(self, name))
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, device: torch.device, size: tuple[int, int]) -> "RiseConfig":
        """batch_size None -> 64 on a CPU (larger batches no longer speed up a forward per
        image, and cost memory); on a GPU 256 images of 224 x 224 px, scaled by pixel count."""
        if self.batch_size is not None:
            return self
        n = 64 if device.type == "cpu" else max(16, int(256 * 224 * 224 / (size[0] * size[1])))
        return replace(self, batch_size=n)


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


def iter_masks(cfg: RiseConfig, size: tuple[int, int],
               device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Yield float masks [b, 1, H, W] in [0, 1], b <= batch_size, n_masks in all, on ``device``.

    Petsiuk et al.: a binary s x s grid with keep probability p, bilinearly upsampled to
    (s + 1) * ceil(H / s) per axis and cropped to H x W at a random shift within one cell, so the
    smooth masks are not aligned to the grid. All grids and shifts come from one generator before
    any chunk is built: mask i is the same whatever the batch size. Bilinear upsampling is
    separable, so upsample-then-crop is ``Ry @ grid @ Rx.T`` with the cropped rows of 1-D
    interpolation matrices: two batched matmuls per chunk instead of b full-size upsamples and
    crops (many small ops are slow on a shared CPU). The draws are made on the CPU (the same
    masks on every device); the chunks are built on ``device``, one at a time.
    """
    device = torch.device(device)
    cfg = cfg.check().resolved(device, size)
    h, w = size
    cell = (math.ceil(h / cfg.s), math.ceil(w / cfg.s))
    gen = torch.Generator().manual_seed(cfg.seed)
    grids = (torch.rand(cfg.n_masks, cfg.s, cfg.s, generator=gen) < cfg.p).float()
    dy = torch.randint(0, cell[0], (cfg.n_masks, 1), generator=gen) + torch.arange(h)
    dx = torch.randint(0, cell[1], (cfg.n_masks, 1), generator=gen) + torch.arange(w)
    # [(s + 1) * cell, s]: the weights F.interpolate(..., "bilinear", align_corners=False) uses
    ry, rx = (F.interpolate(torch.eye(cfg.s)[None], size=(cfg.s + 1) * c, mode="linear",
                            align_corners=False)[0].T for c in cell)
    grids, dy, dx, ry, rx = (t.to(device) for t in (grids, dy, dx, ry, rx))
    for start in range(0, cfg.n_masks, cfg.batch_size):
        b = slice(start, start + cfg.batch_size)
        masks = ry[dy[b]] @ grids[b] @ rx[dx[b]].transpose(1, 2)
        yield masks.clamp_(0, 1)[:, None]  # float rounding can overshoot 1 by an ulp


def blur_sigma_px(cfg: RiseConfig, size: tuple[int, int]) -> float:
    """The blur fill's sigma in input pixels: ``cfg.blur_sigma`` x the shorter side."""
    return cfg.blur_sigma * min(size)


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [C, H, W] per channel, kernel truncated at 3 sigma, edges
    replicated. Linear with weights summing to 1, so blurring the normalized tensor equals
    normalizing the blurred image: no need to go back to raw pixels."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(pixels.dtype).to(pixels.device)
    c = pixels.shape[0]
    out = F.pad(pixels[None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def _fill(cfg: RiseConfig, fill_value, pixels: torch.Tensor) -> torch.Tensor:
    """What masked pixels take (normalized space): a per-channel value [3, 1, 1], or for
    ``fill="blur"`` the blurred image [3, H, W]."""
    if cfg.fill in ("mean", "blur"):
        if fill_value is not None:
            raise VlmprobeError(f"fill_value is only used with fill='black'; with fill="
                                f"{cfg.fill!r} masked pixels take the mean colour (0 in normalized "
                                "space) or the blurred image.")
        if cfg.fill == "blur":
            return gaussian_blur(pixels, blur_sigma_px(cfg, tuple(pixels.shape[1:])))
        return torch.zeros(pixels.shape[0], 1, 1, dtype=pixels.dtype, device=pixels.device)
    if fill_value is None:
        raise VlmprobeError("fill='black' needs fill_value: the normalized value of a raw 0 pixel, "
                            "(0 - mean) / std per channel of the model's preprocessing.")
    value = torch.as_tensor(fill_value, dtype=pixels.dtype, device=pixels.device).reshape(-1, 1, 1)
    if value.shape[0] not in (1, pixels.shape[0]):
        raise VlmprobeError(f"fill_value must have 1 or {pixels.shape[0]} values (one per "
                            f"channel); got {value.shape[0]}.")
    return value


def _scorer(score_fn: ScoreFn, cfg: RiseConfig,
            groups: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """score_fn in the config's score mode, as float64 [b, C] on score_fn's device.

    ``groups``: sizes of consecutive column blocks that are separate classifiers (several probes
    scored on the same embeddings); softmax is taken within each block. Default: one block.
    """
    def scores(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = score_fn(batch)
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise VlmprobeError(f"score_fn must return [batch, n_classes]; for a batch of "
                                f"{batch.shape[0]} it returned shape {tuple(out.shape)}.")
        out = out.detach().to(torch.float64)
        if cfg.score != "softmax":
            return out
        sizes = list(groups) if groups is not None else [out.shape[1]]
        if sum(sizes) != out.shape[1]:
            raise VlmprobeError(f"groups {sizes} do not add up to the {out.shape[1]} score columns.")
        return torch.cat([g.softmax(dim=1) for g in out.split(sizes, dim=1)], dim=1)
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
                  fill_value=None, progress: Callable[[int], None] | None = None,
                  groups: Sequence[int] | None = None) -> RiseResult:
    """RISE maps of one preprocessed image [3, H, W] for every class ``score_fn`` returns.

    masked_i = pixels * mask_i + fill * (1 - mask_i); saliency_c = sum_i score_c(masked_i) *
    mask_i / (N p). ``progress(n)`` is called with the number of masks just scored (a
    :func:`vlmprobe.progress.progress_bar` ``advance`` fits). ``split_half_r`` is the Pearson r
    of the centred maps (:meth:`RiseResult.centred`) from masks [0, N/2) and [N/2, N): the
    reliability of the spatial pattern at half the masks (Spearman-Brown 2r / (1 + r) estimates it
    at N). Centred, because the raw map adds mean_score x coverage noise that carries no
    information about the model. ``groups``: see :func:`_scorer` (several probes, one pass).
    """
    cfg.check()
    _check_pixels(pixels)
    cfg = cfg.resolved(pixels.device, tuple(pixels.shape[1:]))
    fill = _fill(cfg, fill_value, pixels)
    scores = _scorer(score_fn, cfg, groups)
    _, h, w = pixels.shape
    dev = pixels.device
    base = scores(pixels[None])[0].cpu()
    # per half k of the masks: sum_i s_i mask_i, sum_i s_i, sum_i mask_i (float64, on the device)
    sm = torch.zeros(2, base.numel(), h * w, dtype=torch.float64, device=dev)
    s_sum = torch.zeros(2, base.numel(), dtype=torch.float64, device=dev)
    m_sum = torch.zeros(2, h * w, dtype=torch.float64, device=dev)
    done = 0
    for masks in iter_masks(cfg, (h, w), dev):
        s = scores(((pixels - fill) * masks.to(pixels.dtype)).add_(fill)).to(dev)  # [b, C]
        flat = masks.reshape(len(masks), -1).double()              # [b, H*W]
        cut = min(max(cfg.n_masks // 2 - done, 0), len(masks))     # first index of half 2
        for k, sel in enumerate((slice(0, cut), slice(cut, None))):
            sm[k] += s[sel].T @ flat[sel]
            s_sum[k] += s[sel].sum(0)
            m_sum[k] += flat[sel].sum(0)
        done += len(masks)
        if progress is not None:
            progress(len(masks))
    sm, s_sum, m_sum = sm.cpu(), s_sum.cpu(), m_sum.cpu()
    n_half = torch.tensor([cfg.n_masks // 2, cfg.n_masks - cfg.n_masks // 2], dtype=torch.float64)
    centred_halves = sm - (s_sum / n_half[:, None])[:, :, None] * m_sum[:, None, :]
    r = np.array([_pearson(centred_halves[0, c].numpy(), centred_halves[1, c].numpy())
                  for c in range(base.numel())])
    norm = cfg.n_masks * cfg.p
    return RiseResult(saliency=(sm.sum(0) / norm).reshape(-1, h, w).numpy().astype(np.float32),
                      split_half_r=r, n_masks=cfg.n_masks,
                      config=cfg.to_dict() | _fill_record(cfg, fill),
                      base_scores=base.numpy(), mean_score=(s_sum.sum(0) / cfg.n_masks).numpy(),
                      coverage=(m_sum.sum(0) / norm).reshape(h, w).numpy().astype(np.float32))


def _fill_record(cfg: RiseConfig, fill: torch.Tensor) -> dict:
    """The fill as recorded with a map: the value per channel, or the blur's sigma in pixels."""
    if cfg.fill == "blur":
        return {"blur_sigma_px": blur_sigma_px(cfg, tuple(fill.shape[1:]))}
    return {"fill_value": fill.flatten().cpu().tolist()}


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
    cfg = cfg.resolved(pixels.device, tuple(pixels.shape[1:]))
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
            curve.append(scores(((pixels - fill) * keep).add_(fill))[:, target].cpu())
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
    """Lesion contour and text boxes, drawn the same on every panel of an image."""
    if row.get("mask") is not None:
        ax.contour(np.asarray(row["mask"], dtype=float), levels=[0.5], colors="#00e5ff",
                   linewidths=1.2)
    for x0, y0, x1, y1 in row.get("text_boxes") or ():
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="#ffd400", linestyle="--", linewidth=1.2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)


def _overlay(ax, image: np.ndarray, sal: np.ndarray):
    """Saliency over the grayscale image (own min..max); NaN (never seen) hatched grey."""
    if sal.shape != image.shape[:2]:
        raise VlmprobeError(f"saliency {sal.shape} and image {image.shape[:2]} differ; draw maps "
                            "in original-image coordinates (InputGeometry.to_original).")
    ax.imshow(_gray(image), cmap="gray", vmin=0, vmax=255)
    finite = sal[np.isfinite(sal)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(sal), cmap="inferno", alpha=0.6, vmin=lo,
                   vmax=hi if hi > lo else lo + 1e-12)
    unseen = ~np.isfinite(sal)
    if unseen.any():
        ax.imshow(np.ma.masked_where(~unseen, np.ones_like(sal)), cmap="Greys", vmin=0, vmax=2.5,
                  alpha=0.7)
        ax.contourf(unseen.astype(float), levels=[0.5, 1.5], colors="none", hatches=["////"])
    return im


def _legend(fig, rows: Sequence[dict]) -> None:
    handles = [Line2D([], [], color="#00e5ff", lw=1.2, label="lesion mask"),
               Line2D([], [], color="#ffd400", lw=1.2, ls="--", label="text box"),
               Patch(facecolor="0.75", hatch="////", edgecolor="0.35",
                     label="not seen by the model")]
    present = [any(r.get("mask") is not None for r in rows),
               any(r.get("text_boxes") for r in rows),
               any(not np.isfinite(np.asarray(m["saliency"], float)).all()
                   for r in rows for m in r["maps"])]
    if any(present):
        fig.legend(handles=[h for h, p in zip(handles, present) if p],
                   loc="outside lower center", ncol=3, frameon=False)


def _stem(path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".png", ".svg") else path


def plot_rise_panels(rows: Sequence[dict], path: str | Path, title: str,
                     metadata: dict | None = None) -> list[Path]:
    """One row per image: the image, then each of its maps over the grayscale image, all in
    original-image coordinates, so lesion mask and text boxes line up with what was scored.

    Row keys: ``image`` (uint8 [h, w] or [h, w, 3]), ``maps`` (list of dicts with ``saliency``,
    float [h, w], NaN where the model never saw the image: drawn hatched grey; ``title``;
    ``cbar_label``), ``caption``; optional ``mask`` (bool [h, w], cyan contour) and
    ``text_boxes`` ([(x0, y0, x1, y1)], end-exclusive pixel bounds, dashed yellow). Writes
    ``<path>.png`` (``metadata`` as JSON in its Description) and ``<path>.svg``.
    """
    if not rows:
        raise VlmprobeError("plot_rise_panels needs at least one row.")
    n_cols = 1 + max(len(r["maps"]) for r in rows)
    with plt.rc_context({**STYLE, "savefig.dpi": 150, "hatch.color": "0.35"}):
        fig = plt.figure(figsize=(3.2 * n_cols, 3.1 * len(rows) + 0.5), layout="constrained")
        for sub, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
            image = np.asarray(row["image"])
            axes = sub.subplots(1, n_cols, squeeze=False)[0]
            axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)  # uint8: no contrast stretch
            axes[0].set_title("image")
            for ax, m in zip(axes[1:], row["maps"]):
                im = _overlay(ax, image, np.asarray(m["saliency"], dtype=float))
                ax.set_title(m.get("title", "RISE saliency"))
                sub.colorbar(im, ax=ax, shrink=0.85, label=m.get("cbar_label", "saliency"))
            for ax in axes[:1 + len(row["maps"])]:
                _outline(ax, row)
            for ax in axes[1 + len(row["maps"]):]:
                ax.set_visible(False)
            sub.suptitle(row["caption"], fontsize=9)
        _legend(fig, rows)
        fig.suptitle(title, fontsize=10, fontweight="bold")
        return save_figure(fig, _stem(path), metadata)


def plot_rise_grid(rows_by_class: dict[str, Sequence[dict]], path: str | Path, title: str,
                   metadata: dict | None = None) -> list[Path]:
    """Overview of many images: one row per class, one column per image, the first map of
    each row dict (see :func:`plot_rise_panels`) over its image, each on its own colour scale."""
    classes = [c for c, rows in rows_by_class.items() if rows]
    if not classes:
        raise VlmprobeError("plot_rise_grid needs at least one image.")
    n_cols = max(len(rows_by_class[c]) for c in classes)
    all_rows = [r for c in classes for r in rows_by_class[c]]
    with plt.rc_context({**STYLE, "savefig.dpi": 150, "hatch.color": "0.35"}):
        fig, axes = plt.subplots(len(classes), n_cols, squeeze=False, layout="constrained",
                                 figsize=(2.4 * n_cols + 0.6, 2.3 * len(classes) + 0.8))
        for r, c in enumerate(classes):
            for k, ax in enumerate(axes[r]):
                if k >= len(rows_by_class[c]):
                    ax.set_visible(False)
                    continue
                row = rows_by_class[c][k]
                im = _overlay(ax, np.asarray(row["image"]), np.asarray(row["maps"][0]["saliency"],
                                                                      dtype=float))
                _outline(ax, row)
                ax.set_title(row.get("short_caption", ""), fontsize=7)
                if k == 0:
                    ax.set_ylabel(c, fontsize=9, fontweight="bold")
        fig.colorbar(im, ax=axes, shrink=0.6, ticks=[],
                     label="saliency, low → high (each image on its own scale)")
        _legend(fig, all_rows)
        fig.suptitle(title, fontsize=10, fontweight="bold")
        return save_figure(fig, _stem(path), metadata)


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
    from .encoders import load_encoder

    encoder = load_encoder(cache.model.partition("@")[0], device,
                           trust_remote_code=trust_remote_code)
    if encoder.weights_sha256_ != cache.attrs["encoder"]["weights_sha256"]:
        raise VlmprobeError(f"The weights of {cache.model!r} differ from those that made "
                            f"{cache.path}; re-extract the cache (vlmprobe extract --force).")
    return encoder, cache.tap or encoder.entry.tap


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

    from .extract import input_transform

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
    root = paths.images_root(cache, root)
    window = cache.attrs["dataset_entry"].get("dicom_window", "tags")
    intensity = cache.attrs["dataset_entry"].get("intensity", "8bit")
    transform = input_transform(encoder, intensity)  # a float cache is explained on float input
    digests = dict(zip(cache.files["relpath"], cache.files["digest"]))
    fill_value = black_fill_value(encoder) if cfg.fill == "black" else None
    truth = [cache.label_view(_column(label)) for label in labels]

    def score_fn(batch):
        emb = encoder.encode_taps(batch, [tap])[tap]
        return torch.cat([p.decision_function(emb) for p in heads], dim=1)

    def primary_scores(batch):
        return score_fn(batch)[:, :widths[0]]

    stem = probe_path(cache, labels[0], out).name
    out_dir = paths.stage_dir(cache.path, cache.dataset, "rise", out)
    records, panel_rows, saved = [], [], {}
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
