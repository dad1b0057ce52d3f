"""One map (:class:`UmapConfig`) and the grid of them (:class:`UmapGrid`): the paper inspected a
grid of ``n_neighbors`` and ``min_dist`` but does not list it; with no grid options vlmprobe
computes n_neighbors 5, 15, 50 × min_dist 0.0, 0.1, 0.5 (a choice: local to global structure,
packed to spread out).
"""
from __future__ import annotations


from ..validation import VlmprobeError, config

# Real-valued, parameter-free metrics that umap-learn and scikit-learn (the metrics) both know. A
# fixed list, not umap-learn's table, so checking it does not import (and compile) umap-learn.
METRICS = ("cosine", "correlation", "euclidean", "manhattan", "chebyshev", "braycurtis", "canberra")


@config
class UmapConfig:
    """One map."""

    metric: str = "cosine"
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0
    fast: bool = False  # --fast: umap-learn unseeded (multi-threaded, not reproducible)

    def tag(self) -> str:
        return f"{self.metric}-nn{self.n_neighbors}-md{self.min_dist:g}-{_seed_tag(self)}"


def _seed_tag(cfg) -> str:
    return "fast" if cfg.fast else f"seed{cfg.seed}"


def seed_text(cfg) -> str:
    """For figure titles (a UmapConfig or UmapGrid): the seed, or that there is none."""
    return "unseeded (--fast)" if cfg.fast else f"seed={cfg.seed}"


@config
class UmapGrid:
    """Every (n_neighbors, min_dist) pair, one seed and metric; the module docstring says why 3×3."""

    metric: str = "cosine"
    n_neighbors: tuple[int, ...] = (5, 15, 50)
    min_dist: tuple[float, ...] = (0.0, 0.1, 0.5)
    seed: int = 0
    fast: bool = False

    @classmethod
    def parse(cls, metric: str, n_neighbors: str | None, min_dist: str | None,
              seed: int, fast: bool = False) -> UmapGrid:
        """From the CLI's comma lists; an option left out takes the default grid's values."""
        nn = _numbers(n_neighbors, int, "--n-neighbors") if n_neighbors else cls.n_neighbors
        md = _numbers(min_dist, float, "--min-dist") if min_dist else cls.min_dist
        return cls(metric=metric, n_neighbors=nn, min_dist=md, seed=seed, fast=fast)

    @classmethod
    def single(cls, cfg: UmapConfig) -> UmapGrid:
        return cls(cfg.metric, (cfg.n_neighbors,), (cfg.min_dist,), cfg.seed, cfg.fast)

    def configs(self) -> list[UmapConfig]:
        """Row-major: n_neighbors down the grid figure, min_dist across."""
        return [UmapConfig(self.metric, nn, md, self.seed, self.fast)
                for nn in self.n_neighbors for md in self.min_dist]

    def tag(self) -> str:
        nn = "_".join(str(v) for v in self.n_neighbors)
        md = "_".join(f"{v:g}" for v in self.min_dist)
        return f"{self.metric}-nn{nn}-md{md}-{_seed_tag(self)}"


def _numbers(text: str, kind, option: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise VlmprobeError(f"{option} {text!r}: expected comma-separated {kind.__name__}s, "
                            f"e.g. {option} 5,15,50.") from None
    if len(set(values)) != len(values):
        raise VlmprobeError(f"{option} {text!r} repeats a value.")
    return values
