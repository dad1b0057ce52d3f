"""Shared figure conventions: paper-ready style, PNG + SVG, provenance embedded in the PNG."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "figure.dpi": 100, "savefig.dpi": 200, "axes.spines.top": False,
         "axes.spines.right": False, "svg.fonttype": "none"}


def save_figure(fig, path: Path, metadata: dict | None = None) -> list[Path]:
    """Write ``<path>.png`` (provenance JSON in its Description) and ``<path>.svg``; close the figure.

    ``path`` is a stem: names like ``model.md0.1`` keep their dots.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    desc = json.dumps(metadata or {}, default=str, sort_keys=True)
    png, svg = path.with_name(path.name + ".png"), path.with_name(path.name + ".svg")
    fig.savefig(png, bbox_inches="tight", metadata={"Description": desc, "Software": "vlmprobe"})
    fig.savefig(svg, bbox_inches="tight", metadata={"Description": desc[:2000]})
    plt.close(fig)
    return [png, svg]
