"""Experiment: does RISE show that a probe for the burnt-in word looks at the text more than the
class probe does? The acceptance check tests/rise/test_rise_bias.py runs where it passes.

Breastus phantom (``--n`` images, text-label correlation ``--r``) -> efficientnet_lite0 cache ->
class probe and word probe (paper protocol) -> RISE with ``--n-masks`` masks on the first 10
held-out test images that bear a word, both probes scored on the same masked embeddings. Prints
each image's share of positive saliency inside the text box for both probes, how often the word
probe's share is larger, and a one-sided paired Wilcoxon p (the issue's target: >= 9 of 10 and
p < 0.01), then an occlusion check: does filling the word's box (RISE's fill, in the model's input)
move each probe's decision more than filling a random box of the same size? Where it does not, no
occlusion saliency can find the word. Results and the reading: benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/rise_bias.py [--r 0] [--n 300] [--n-masks 500] [--score decision]
        [--fill mean|black|blur] [--blur-sigma 0.045] [--p 0.5] [--s 8] [--tap last_stage_mean]
        [--workdir DIR] [--occlusion-only]
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from vlmprobe.cache import Cache, read_cache
from vlmprobe.extraction import extract
from vlmprobe.data.phantoms import make_phantom
from vlmprobe.probe import LinearProbe, run_probe, probe_path
from vlmprobe.rise import ImageChoice, RiseConfig, explain_cache
from vlmprobe.data.splits import read_split

MODEL = "efficientnet_lite0"


def phantom_cache(workdir: Path, r: float = 0.0, n: int = 300, seed: int = 7,
                  tap: str | None = None, log=print) -> tuple[Cache, Path]:
    """The phantom, its lite0 cache (``tap``: that further tap's view) and the class and word
    probes in ``workdir`` (made once; reused when ``workdir`` already holds them)."""
    data, cache_dir = workdir / "data", workdir / "cache"
    path = cache_dir / "breastus_phantom" / f"{MODEL}.h5"
    if not path.is_file():
        if not data.is_dir():
            make_phantom("breastus", data, n=n, seed=seed, text_label_correlation=r,
                         progress=False)
        path = extract(MODEL, "breastus_phantom", root=data, out=cache_dir, device="cpu",
                       progress=False, taps=[tap] if tap else None).path
    cache = read_cache(path).tap_views(tap)[0]
    for label in ("class", "word"):
        if not probe_path(cache, label).with_name(probe_path(cache, label).name + ".npz").is_file():
            result = run_probe([cache], label=None if label == "class" else label)[0]
            log(f"{label} probe: test macro-F1 {result.test['macro_f1']:.3f}")
    return cache, data


def word_test_ids(cache: Cache, k: int = 10) -> tuple[str, ...]:
    """The first ``k`` held-out test images (the class probe's split) that bear a word."""
    split = read_split(LinearProbe.load(probe_path(cache, "class")).info["split_file"])
    test = {r for r, t in zip(split.relpaths, split.test) if t}
    return tuple(r for r, w in zip(cache.relpaths, cache.metadata["word"]) if w and r in test)[:k]


@dataclass
class BiasResult:
    mass: dict            # probe -> share of positive saliency inside the text box, per image
    wins: int             # images where the word probe's share is larger
    p_value: float        # one-sided paired Wilcoxon, word > class
    split_half_r: float   # mean over images and probes

    @property
    def passed(self) -> bool:
        return self.wins >= 9 and self.p_value < 0.01


def bias_check(cache: Cache, root: Path, ids, cfg: RiseConfig) -> BiasResult:
    """RISE of the class and word probes on the same masked embeddings of ``ids``."""
    res = explain_cache(cache, cfg, ImageChoice(ids=tuple(ids)), labels=["class", "word"],
                        root=root, device="cpu", causal_steps=0)
    mass = {p: np.array([r["text_mass"] for r in res.records if r["probe"] == p])
            for p in ("class", "word")}
    return BiasResult(mass, int((mass["word"] > mass["class"]).sum()),
                      float(wilcoxon(mass["word"], mass["class"], alternative="greater").pvalue),
                      float(np.mean([r["split_half_r"] for r in res.records])))


def occlusion_check(cache: Cache, root: Path, ids, cfg: RiseConfig, n_random: int = 20,
                    log=print) -> dict[str, np.ndarray]:
    """Is each probe's evidence local to the text? Fill the word's box with RISE's fill (``cfg``:
    mean colour, black or the blurred image, in the model's input) and compare the drop in the
    explained class's score (``cfg.score``: decision value or softmax probability) with boxes of
    the same size placed at random: z = (text drop - mean random drop) / sd, per probe and
    image. RISE can only find the text where occluding it matters more than occluding anything
    else of its size."""
    import torch

    from vlmprobe.data import read_sample
    from vlmprobe.rise import cache_encoder
    from vlmprobe.rise.explain import _load_probe, _text_boxes, black_fill_value
    from vlmprobe.rise.saliency import _fill

    probes = {label: _load_probe(cache, label, None) for label in ("class", "word")}
    encoder, tap = cache_encoder(cache)
    fill_value = black_fill_value(encoder) if cfg.fill == "black" else None
    rng = np.random.default_rng(0)
    z = {label: [] for label in probes}
    log(f"occlusion check ({cfg.fill} fill, {cfg.score} score, {n_random} random boxes of the "
        "text box's size):")
    for rel in ids:
        i = cache.relpaths.index(rel)
        image = read_sample(root, rel, "tags").convert("RGB")
        (x0, y0, x1, y1), = _text_boxes(cache, i, image, None, False)[0]
        pixels = encoder.transform_(image)
        fill = _fill(cfg, fill_value, pixels)
        (_, h, w), geometry = pixels.shape, encoder.geometry(*image.size)
        (xa, xb), (ya, yb) = (np.round(v).astype(int) for v in
                              geometry.to_input(np.array([x0, x1 - 1]), np.array([y0, y1 - 1])))
        bh, bw = yb - ya + 1, xb - xa + 1
        corners = [(ya, xa)] + [(rng.integers(0, h - bh), rng.integers(0, w - bw))
                                for _ in range(n_random)]
        keep = torch.ones(len(corners) + 1, 1, h, w)
        for k, (y, x) in enumerate(corners, start=1):
            keep[k, :, max(y, 0):y + bh, max(x, 0):x + bw] = 0
        with torch.no_grad():
            emb = encoder.encode_taps((pixels - fill) * keep + fill, [tap])[tap]
        line = []
        for label, probe in probes.items():
            s = probe.decision_function(emb)
            s = (s.softmax(dim=1) if cfg.score == "softmax" else s).numpy()
            t = int(np.argmax(s[0]))
            drop = s[0, t] - s[1:, t]
            z[label].append((drop[0] - drop[1:].mean()) / drop[1:].std())
            line.append(f"{label} ({probe.class_names[t]}) text drop {drop[0]:+.2f}, random "
                        f"{drop[1:].mean():+.2f} ± {drop[1:].std():.2f}, z {z[label][-1]:+.1f}")
        log(f"  {rel}: " + "; ".join(line))
    z = {label: np.array(v) for label, v in z.items()}
    for label, values in z.items():
        log(f"{label} probe: text occlusion beyond 2 sd of random boxes in "
            f"{int((values > 2).sum())}/{len(values)} images (median z {np.median(values):+.1f})")
    return z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--r", type=float, default=0.0, help="text-label correlation of the phantom")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--n-masks", type=int, default=500)
    ap.add_argument("--score", default="decision")
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--s", type=int, default=8, help="mask grid cells per side")
    ap.add_argument("--fill", default="mean")
    ap.add_argument("--blur-sigma", type=float, default=RiseConfig.blur_sigma)
    ap.add_argument("--tap", help="explain this further tap of lite0 (e.g. last_stage_mean)")
    ap.add_argument("--workdir", type=Path, help="reuse the phantom, cache and probes made here")
    ap.add_argument("--occlusion-only", action="store_true", help="skip RISE (the cheap screen)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rise_bias-"))
    cache, data = phantom_cache(workdir, args.r, args.n, args.seed, args.tap)
    ids = word_test_ids(cache)
    cfg = RiseConfig(n_masks=args.n_masks, score=args.score, p=args.p, s=args.s, fill=args.fill,
                     blur_sigma=args.blur_sigma)
    occlusion_check(cache, data, ids, cfg)
    if args.occlusion_only:
        return
    res = bias_check(cache, data, ids, cfg)
    print(f"text-box share of positive saliency, word probe {np.round(res.mass['word'], 3)}")
    print(f"                                     class probe {np.round(res.mass['class'], 3)}")
    print(f"mean split-half r {res.split_half_r:.2f}; outputs in {workdir}")
    print(f"word > class in {res.wins}/{len(ids)} images, one-sided paired Wilcoxon p = "
          f"{res.p_value:.4f} (target: >= 9/10, p < 0.01)")


if __name__ == "__main__":
    main()
