"""Probe figures: the test confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..figures import save_figure, styled


def confusion_figure(fields: dict, class_names: list[str], stem: Path, title: str) -> None:
    """Row-normalized test confusion matrix, summed over the 5 fold-models at the selected t."""
    s, k = fields["test_samples"], len(class_names)
    cm = sum(np.bincount(s["y"] * k + p, minlength=k * k).reshape(k, k) for p in s["fold_pred"])
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    with styled():
        fig = Figure(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k))
        ax = fig.subplots()
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(class_names, rotation=45, ha="right")
        ax.set_yticklabels(class_names)
        save_figure(fig, stem, {"stage": "probe", "counts": cm.tolist(), "classes": class_names})
