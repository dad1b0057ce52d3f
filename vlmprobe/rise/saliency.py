"""RISE saliency for an opaque scorer (docs/protocol.md, RISE; Petsiuk, Das & Saenko, BMVC 2018).

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

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import VlmprobeError, config

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _param_error(name: str, allowed: str, value) -> VlmprobeError:
    return VlmprobeError(f"The {name!r} parameter of RiseConfig must be {allowed}. "
                         f"Got {value!r} instead.")


@config
class RiseConfig:
    """RISE choices, all recorded with every map (docs/protocol.md, RISE, says why each matters).

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
        image, and cost memory); on a GPU 256 images of 224 x 224 px, scaled by pixel count. A
        volume: as many as hold the voxels of that many images (one CT volume of Merlin's
        224 x 224 x 160 is worth 160 images: a batch of one)."""
        if self.batch_size is not None:
            return self
        per = 64 if device.type == "cpu" else 256
        scaled = int(per * 224 * 224 / math.prod(size))
        n = (max(1, scaled) if len(size) == 3 else
             per if device.type == "cpu" else max(16, scaled))
        return replace(self, batch_size=n)


@dataclass
class RiseResult:
    """One image's RISE maps for all C classes, in model-input coordinates.

    ``saliency`` is the paper's map, sum_i score_c(masked_i) * mask_i / (N p). It carries an
    offset of about ``mean_score[c]`` (because E[mask] = p) on top of the informative variation;
    :meth:`centred` removes it exactly, which is what mass-based metrics need.
    """

    saliency: np.ndarray      # float32 [C, H, W] ([C, X, Y, Z] for a volume)
    split_half_r: np.ndarray  # float64 [C], NaN where a half-map is constant
    n_masks: int
    config: dict
    base_scores: np.ndarray   # [C], score of the unmasked image (same score mode as the map)
    mean_score: np.ndarray    # [C], mean score over the masked images
    coverage: np.ndarray      # float32 [H, W], sum_i mask_i / (N p): ~1, the map's sampling density

    def centred(self) -> np.ndarray:
        """sum_i (score_c,i - mean score_c) mask_i / (N p): > 0 where keeping a pixel raises the
        score above its average under masking, < 0 where it lowers it."""
        offset = self.mean_score.reshape(-1, *(1,) * self.coverage.ndim) * self.coverage
        return (self.saliency - offset).astype(np.float32)


def iter_masks(cfg: RiseConfig, size: tuple[int, ...],
               device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Yield float masks [b, 1, H, W] in [0, 1], b <= batch_size, n_masks in all, on ``device``;
    for a 3-D ``size`` (a volume) masks [b, 1, X, Y, Z] from s x s x s grids, the same estimator.

    Petsiuk et al.: a binary s x s grid with keep probability p, bilinearly upsampled to
    (s + 1) * ceil(H / s) per axis and cropped to H x W at a random shift within one cell, so the
    smooth masks are not aligned to the grid. The upsampling is the reference code's
    (``skimage.transform.resize(grid, ..., order=1, mode="reflect", anti_aliasing=False)``):
    beyond the outer cell centres the grid is mirrored, not held constant. All grids and shifts come from one generator before
    any chunk is built: mask i is the same whatever the batch size. Bilinear upsampling is
    separable, so upsample-then-crop is ``Ry @ grid @ Rx.T`` with the cropped rows of 1-D
    interpolation matrices: two batched matmuls per chunk instead of b full-size upsamples and
    crops (many small ops are slow on a shared CPU). The draws are made on the CPU (the same
    masks on every device); the chunks are built on ``device``, one at a time.
    """
    device = torch.device(device)
    if len(size) not in (2, 3):
        raise VlmprobeError(f"RISE masks are 2-D or 3-D; got a size of {len(size)} axes {size}.")
    cfg = cfg.check().resolved(device, size)
    cell = [math.ceil(n / cfg.s) for n in size]
    gen = torch.Generator().manual_seed(cfg.seed)
    grids = (torch.rand(cfg.n_masks, *(cfg.s,) * len(size), generator=gen) < cfg.p).float()
    shifts = [torch.randint(0, c, (cfg.n_masks, 1), generator=gen) + torch.arange(n)
              for c, n in zip(cell, size)]
    resize = [_upsampling_matrix(cfg.s, (cfg.s + 1) * c) for c in cell]
    grids, shifts, resize = grids.to(device), [t.to(device) for t in shifts], \
        [t.to(device) for t in resize]
    for start in range(0, cfg.n_masks, cfg.batch_size):
        b = slice(start, start + cfg.batch_size)
        rows = [r[d[b]] for r, d in zip(resize, shifts)]  # per axis [b, n, s]
        if len(size) == 2:
            masks = rows[0] @ grids[b] @ rows[1].transpose(1, 2)
        else:
            # one axis at a time (b x s x s x Z, then b x s x Y x Z): a single four-operand
            # einsum contracts left to right through a b x X x s x Y x s x Z x s intermediate
            masks = torch.einsum("bzk,bijk->bijz", rows[2], grids[b])
            masks = torch.einsum("byj,bijz->biyz", rows[1], masks)
            masks = torch.einsum("bxi,biyz->bxyz", rows[0], masks)
        yield masks.clamp_(0, 1)[:, None]  # float rounding can overshoot 1 by an ulp


def _upsampling_matrix(s: int, size: int) -> torch.Tensor:
    """[size, s]: linear interpolation of s cell values onto ``size`` pixels, cell and pixel
    centres aligned (align_corners=False), indices beyond the ends mirrored (-1 -> 1,
    s -> s - 2): the 1-D weights of skimage's order-1 resize with mode="reflect"."""
    x = (torch.arange(size, dtype=torch.float64) + 0.5) * s / size - 0.5
    lo = torch.floor(x)
    out = torch.zeros(size, s, dtype=torch.float64)
    for index, weight in ((lo, 1 - (x - lo)), (lo + 1, x - lo)):
        mirrored = index.abs()
        mirrored = torch.where(mirrored > s - 1, 2 * (s - 1) - mirrored, mirrored)
        out.index_put_((torch.arange(size), mirrored.long()), weight, accumulate=True)
    return out.float()


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
    """What masked pixels take (normalized space): a per-channel value [3, 1, 1] ([C, 1, 1, 1]
    for a volume), or for ``fill="blur"`` the blurred image [3, H, W]."""
    ones = (1,) * (pixels.ndim - 1)
    if cfg.fill == "blur" and pixels.ndim != 3:
        raise VlmprobeError("fill='blur' blurs 2-D images; for a volume use fill='mean' or "
                            "'black'.")
    if cfg.fill in ("mean", "blur"):
        if fill_value is not None:
            raise VlmprobeError(f"fill_value is only used with fill='black'; with fill="
                                f"{cfg.fill!r} masked pixels take the mean colour (0 in normalized "
                                "space) or the blurred image.")
        if cfg.fill == "blur":
            return gaussian_blur(pixels, blur_sigma_px(cfg, tuple(pixels.shape[1:])))
        return torch.zeros(pixels.shape[0], *ones, dtype=pixels.dtype, device=pixels.device)
    if fill_value is None:
        raise VlmprobeError("fill='black' needs fill_value: the normalized value of a raw 0 pixel, "
                            "(0 - mean) / std per channel of the model's preprocessing.")
    value = torch.as_tensor(fill_value, dtype=pixels.dtype, device=pixels.device).reshape(-1, *ones)
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
    if not isinstance(pixels, torch.Tensor) or pixels.ndim not in (3, 4):
        raise VlmprobeError("pixels must be one preprocessed image, a tensor [3, H, W], or one "
                            "volume [C, X, Y, Z]; got "
                            f"{getattr(pixels, 'shape', type(pixels).__name__)}.")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def rise_saliency(score_fn: ScoreFn, pixels: torch.Tensor, cfg: RiseConfig = RiseConfig(),
                  fill_value=None, progress: Callable[[int], None] | None = None,
                  groups: Sequence[int] | None = None) -> RiseResult:
    """RISE maps of one preprocessed image [3, H, W] (or volume [C, X, Y, Z], with 3-D masks)
    for every class ``score_fn`` returns.

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
    size = tuple(pixels.shape[1:])
    cfg = cfg.resolved(pixels.device, size)
    fill = _fill(cfg, fill_value, pixels)
    scores = _scorer(score_fn, cfg, groups)
    dev = pixels.device
    base = scores(pixels[None])[0].cpu()
    # per half k of the masks: sum_i s_i mask_i, sum_i s_i, sum_i mask_i (float64, on the device)
    sm = torch.zeros(2, base.numel(), math.prod(size), dtype=torch.float64, device=dev)
    s_sum = torch.zeros(2, base.numel(), dtype=torch.float64, device=dev)
    m_sum = torch.zeros(2, math.prod(size), dtype=torch.float64, device=dev)
    done = 0
    for masks in iter_masks(cfg, size, dev):
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
    return RiseResult(saliency=(sm.sum(0) / norm).reshape(-1, *size).numpy().astype(np.float32),
                      split_half_r=r, n_masks=cfg.n_masks,
                      config=cfg.to_dict() | _fill_record(cfg, fill),
                      base_scores=base.numpy(), mean_score=(s_sum.sum(0) / cfg.n_masks).numpy(),
                      coverage=(m_sum.sum(0) / norm).reshape(size).numpy().astype(np.float32))


def _fill_record(cfg: RiseConfig, fill: torch.Tensor) -> dict:
    """The fill as recorded with a map: the value per channel, or the blur's sigma in pixels."""
    if cfg.fill == "blur":
        return {"blur_sigma_px": blur_sigma_px(cfg, tuple(fill.shape[1:]))}
    return {"fill_value": fill.flatten().cpu().tolist()}


def deletion_insertion_auc(score_fn: ScoreFn, pixels: torch.Tensor, saliency_map: np.ndarray,
                           target: int, cfg: RiseConfig = RiseConfig(), fill_value=None,
                           steps: int = 50) -> dict[str, float]:
    """RISE's causal metrics for one map (Petsiuk et al. §4.1), in the config's score mode.

    Pixels are ranked by ``saliency_map`` [H, W] (input coordinates; voxels [X, Y, Z] for a
    volume). Deletion replaces the top fraction t with the fill, insertion starts from the
    all-fill image and reveals the top fraction t, t = 0, 1/steps, ..., 1; each AUC is the
    trapezoid mean of ``target``'s score over t. Good maps: low deletion, high insertion. The paper's insertion starts from a blurred image;
    here both use the RISE fill, so the three numbers share one notion of "removed".
    """
    cfg.check()
    _check_pixels(pixels)
    size = tuple(pixels.shape[1:])
    cfg = cfg.resolved(pixels.device, size)
    if not isinstance(steps, numbers.Integral) or steps < 1:
        raise VlmprobeError(f"steps must be an int >= 1; got {steps!r}.")
    sal = np.asarray(saliency_map, dtype=np.float64)
    if sal.shape != size:
        raise VlmprobeError(f"saliency_map has shape {sal.shape}; the input is "
                            f"{' x '.join(map(str, size))}.")
    fill = _fill(cfg, fill_value, pixels)
    scores = _scorer(score_fn, cfg)
    n = sal.size
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-sal.ravel(), kind="stable")] = np.arange(n)
    rank = torch.as_tensor(rank.reshape(size), device=pixels.device)
    counts = np.round(np.linspace(0, n, steps + 1)).astype(int)
    out = {}
    for name, keep_top in (("deletion", False), ("insertion", True)):
        curve = []
        for start in range(0, len(counts), cfg.batch_size):
            top = torch.stack([rank < int(k) for k in counts[start:start + cfg.batch_size]])
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
