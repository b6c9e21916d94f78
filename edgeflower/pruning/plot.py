"""The portfolio's Pareto plot: accuracy against CPU latency and against size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from edgeflower.pruning.portfolio import Portfolio

__all__ = ["plot_pareto"]


def plot_pareto(
    portfolios: Sequence[tuple[str, Portfolio]], path: str | Path, batch_size: int = 1, title: str = ""
) -> Path:
    """Draw accuracy vs latency (``batch_size``) and accuracy vs weight bytes, Pareto fronts joined by lines.

    Parameters
    ----------
    portfolios : sequence of (label, Portfolio)
        One series per portfolio.
    path : str or Path
        Output PNG.
    batch_size : int
        Which latency to plot.
    title : str
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, pf in portfolios:
        front = {v.name for v in pf.pareto(batch_size)}
        for ax, key, xlabel in (
            (axes[0], lambda v: v.latency_ms.get(batch_size, math.nan), f"CPU latency, batch {batch_size} (ms)"),
            (axes[1], lambda v: v.bytes / 1e6, "weights (MB)"),
        ):
            xs = [key(v) for v in pf.variants]
            ys = [100 * v.accuracy for v in pf.variants]
            pts = ax.scatter(xs, ys, label=label, zorder=3)
            fr = sorted((key(v), 100 * v.accuracy) for v in pf.variants if v.name in front)
            ax.plot([p[0] for p in fr], [p[1] for p in fr], color=pts.get_facecolor()[0], alpha=0.6)
            for v, x, y in zip(pf.variants, xs, ys, strict=True):
                ax.annotate(v.name, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
