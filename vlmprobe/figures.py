"""Shared figure conventions: paper-ready style, PNG + SVG, provenance embedded in the PNG.

Figures are plain :class:`matplotlib.figure.Figure` objects, never pyplot's: vlmprobe chooses no
backend and registers nothing with pyplot, so a notebook's inline backend and a user's own figures
are left as they were.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from .cache.chunks import written_beside

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "figure.dpi": 100, "savefig.dpi": 200, "axes.spines.top": False,
         "axes.spines.right": False, "svg.fonttype": "none"}


def styled(extra: dict | None = None):
    """A context in which figures are drawn (and saved) in :data:`STYLE`, updated by ``extra``."""
    return matplotlib.rc_context({**STYLE, **(extra or {})})


def save_figure(fig: Figure, path: Path, metadata: dict | None = None) -> list[Path]:
    """Write ``<path>.png`` (provenance JSON in its Description) and ``<path>.svg``.

    ``path`` is a stem: names like ``model.md0.1`` keep their dots.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    desc = json.dumps(metadata or {}, default=str, sort_keys=True)
    png, svg = path.with_name(path.name + ".png"), path.with_name(path.name + ".svg")
    with written_beside(png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight",
                    metadata={"Description": desc, "Software": "vlmprobe"})
    with written_beside(svg) as tmp:
        fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Description": desc[:2000]})
    return [png, svg]
