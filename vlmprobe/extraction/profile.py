"""Where an extraction's wall time goes (``vlmprobe extract --profile``).

The main process's wall time is split into phases that follow one another (fingerprinting and
model loading overlap: both are shown, with the time they ran together); the workers report
what they spent per batch on decoding + transform and on the forward, so a run whose main
process mostly waits for batches shows whether the workers were busy or idle.
"""
from __future__ import annotations

import contextlib
import time

#: main-process phases, in the order a run passes them
PHASES = ("listing", "fingerprint", "model load", "setup", "waiting for batches", "GPU decode",
          "forward", "chunk writes", "consolidation")


class Profile:
    """Wall seconds per phase of the main process, and the workers' busy seconds."""

    def __init__(self):
        self.start = time.perf_counter()
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.overlap = 0.0  # seconds fingerprinting and model loading ran side by side
        self.workers = {"decode": 0.0, "forward": 0.0, "batches": 0}
        self.plan, self.n_workers = "", 0
        self.total: float | None = None
        self._open: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    def begin(self, name: str) -> None:
        """Start timing ``name`` (:meth:`phase` for a block; this for a phase that spans
        several blocks or ends on one of several paths)."""
        self._open[name] = time.perf_counter()

    def end(self, name: str) -> None:
        self.wall[name] += time.perf_counter() - self._open.pop(name)

    def add_batch(self, decode_s: float, forward_s: float = 0.0) -> None:
        """A worker's seconds for one batch (forward only where the worker ran the model)."""
        self.workers["decode"] += decode_s
        self.workers["forward"] += forward_s
        self.workers["batches"] += 1

    def finish(self) -> "Profile":
        self.total = time.perf_counter() - self.start
        return self

    def as_dict(self) -> dict:
        total = self.total if self.total is not None else time.perf_counter() - self.start
        other = total - sum(self.wall.values()) + self.overlap
        return {"total_s": total, "phases_s": dict(self.wall, other=other),
                "overlap_s": self.overlap, "workers_s": dict(self.workers), "plan": self.plan,
                "n_workers": self.n_workers}

    def lines(self) -> list[str]:
        return profile_lines(self.as_dict())


def profile_lines(profile: dict) -> list[str]:
    """The table ``--profile`` prints (from :meth:`Profile.as_dict`, e.g. an
    ``ExtractResult.profile``): each phase's seconds and share of the wall time."""
    total = profile["total_s"]
    out = [f"profile: {total:.2f} s wall; {profile['plan']}"]
    for name, s in profile["phases_s"].items():
        if s > 0.0005 or name in ("waiting for batches", "forward"):
            out.append(f"  {name:<20} {s:8.2f} s  {100 * s / total:5.1f} %")
    if profile["overlap_s"] > 0.0005:
        out.append(f"  (fingerprint and model load ran side by side for "
                   f"{profile['overlap_s']:.2f} s)")
    w, n = profile["workers_s"], profile["n_workers"]
    if n and w["batches"]:
        busy = (w["decode"] + w["forward"]) / n
        out.append(f"  workers ({n}, {w['batches']} batches): decode + transform "
                   f"{w['decode']:.2f} s, forward {w['forward']:.2f} s (summed); each busy "
                   f"{100 * busy / total:.0f} % of the wall time")
    return out
