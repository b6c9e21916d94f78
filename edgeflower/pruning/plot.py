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

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for label, pf in portfolios:
        dense = _dense(pf, batch_size)
        for ax, key, dense_x, xlabel in (
            (
                axes[0],
                lambda v: v.latency_ms.get(batch_size, math.nan),
                dense[0],
                f"CPU latency, batch {batch_size} (ms)",
            ),
            (axes[1], lambda v: v.bytes / 1e6, dense[1], "weights (MB)"),
        ):
            xs = [key(v) for v in pf.variants]
            ys = [100 * v.accuracy for v in pf.variants]
            pts = ax.scatter(xs, ys, label=f"{label}: pruned variants", zorder=3)
            color = pts.get_facecolor()[0]
            fr = _front(list(zip(xs, ys, strict=True)))  # this panel's own front: smaller x, higher accuracy
            ax.plot([p[0] for p in fr], [p[1] for p in fr], color=color, alpha=0.6, label=f"{label}: Pareto front")
            if dense[2] is not None and not math.isnan(dense_x):
                ax.scatter([dense_x], [dense[2]], marker="X", s=90, color="k", zorder=4, label=f"{label}: dense model")
                ax.axhline(dense[2], color="k", lw=0.8, ls=":", alpha=0.6)
            _annotate(ax, [(v.name, x, y) for v, x, y in zip(pf.variants, xs, ys, strict=True)])
            ax.margins(x=0.1, y=0.08)  # room for the labels of the outermost points
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (x no larger and y no smaller, one strictly), by x."""
    ok = [(x, y) for x, y in points if not (math.isnan(x) or math.isnan(y))]
    return sorted((x, y) for x, y in ok if not any(ox <= x and oy >= y and (ox < x or oy > y) for ox, oy in ok))


def _dense(pf: Portfolio, batch_size: int) -> tuple[float, float, float | None]:
    """The dense baseline's (latency at ``batch_size``, MB, accuracy %) from the manifest (NaN / None if absent)."""
    dense = (pf.meta or {}).get("dense") or {}
    lat = dense.get("latency_ms") or {}
    latency = lat.get(batch_size, lat.get(str(batch_size), math.nan))
    acc = dense.get("accuracy")
    mb = dense["bytes"] / 1e6 if "bytes" in dense else math.nan
    return float(latency), mb, (100 * float(acc) if acc is not None else None)


def _annotate(ax, points: Sequence[tuple[str, float, float]]) -> None:
    """Label points readably: variants at the same place share one label (``x2-x32``); labels alternate above and
    below in order of x, on a white box."""
    groups: list[tuple[list[str], float, float]] = []
    for name, x, y in points:
        if math.isnan(x) or math.isnan(y):
            continue
        for names, gx, gy in groups:
            if abs(gy - y) < 0.15 and (abs(gx - x) <= 0.03 * max(abs(gx), 1e-9)):
                names.append(name)
                break
        else:
            groups.append(([name], x, y))
    for i, (names, x, y) in enumerate(sorted(groups, key=lambda g: g[1])):
        text = names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"
        ax.annotate(
            text, (x, y), textcoords="offset points", xytext=(4, 7 if i % 2 == 0 else -12), fontsize=7,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )  # fmt: skip
