"""The portfolio's Pareto plot: accuracy against CPU latency and against size, with the dense baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeflower.pruning.portfolio import Portfolio

__all__ = ["ParetoSeries", "pareto_figure", "plot_pareto", "plot_pareto_series", "series_of"]


@dataclass(frozen=True)
class ParetoSeries:
    """One model's points of the Pareto plot.

    Attributes
    ----------
    label : str
        Legend name, e.g. ``"VGG-16 (width 0.25)"``.
    names : sequence of str
        Variant names (``"x16"``), one per point.
    latency_ms, megabytes, accuracy_pct : sequence of float
        Per variant: CPU latency (ms), weight size (MB) and test accuracy (%); NaN where not measured.
    dense : (float, float, float), optional
        The dense baseline's (latency ms, MB, accuracy %).
    """

    label: str
    names: Sequence[str]
    latency_ms: Sequence[float]
    megabytes: Sequence[float]
    accuracy_pct: Sequence[float]
    dense: tuple[float, float, float] | None = None


def series_of(label: str, pf: Portfolio, batch_size: int = 1) -> ParetoSeries:
    """The :class:`ParetoSeries` of a portfolio (its dense baseline from the manifest's ``meta["dense"]``)."""
    dense = _dense(pf, batch_size)
    return ParetoSeries(
        label=label,
        names=[v.name for v in pf.variants],
        latency_ms=[float(v.latency_ms.get(batch_size, math.nan)) for v in pf.variants],
        megabytes=[v.bytes / 1e6 for v in pf.variants],
        accuracy_pct=[100 * v.accuracy for v in pf.variants],
        dense=None if dense[2] is None else (dense[0], dense[1], dense[2]),
    )


def plot_pareto(
    portfolios: Sequence[tuple[str, Portfolio]], path: str | Path, batch_size: int = 1, title: str = ""
) -> Path:
    """Draw accuracy vs latency (``batch_size``) and accuracy vs weight size, Pareto fronts joined by lines.

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
    series = [series_of(label, pf, batch_size) for label, pf in portfolios]
    return plot_pareto_series(series, path, batch_size, title)


def plot_pareto_series(series: Sequence[ParetoSeries], path: str | Path, batch_size: int = 1, title: str = "") -> Path:
    """Write :func:`pareto_figure` of ``series`` to the PNG ``path``."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(series, batch_size, title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def pareto_figure(series: Sequence[ParetoSeries], batch_size: int = 1, title: str = "") -> Any:
    """The Pareto figure (not saved): per series its variants as dots labelled by name (labels placed so they do not
    collide, variants at the same place share one label), its Pareto front as a line, and its dense baseline as a
    star labelled ``dense``. The size panel has a log axis with a few plain-number ticks (0.2, 0.5, 1, 2 MB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels: list[list[tuple[str, float, float, str]]] = [[], []]
    for i, s in enumerate(series):
        color = colors[i % len(colors)]
        for p, (ax, xs) in enumerate(((axes[0], s.latency_ms), (axes[1], s.megabytes))):
            ys = list(s.accuracy_pct)
            ax.scatter(xs, ys, color=color, s=30, zorder=3)
            fr = _front(list(zip(xs, ys, strict=True)))  # this panel's own front: smaller x, higher accuracy
            ax.plot([q[0] for q in fr], [q[1] for q in fr], color=color, alpha=0.6, lw=1.5, zorder=2)
            labels[p] += [(n, x, y, color) for n, x, y in zip(s.names, xs, ys, strict=True)]
            if s.dense is not None and not math.isnan(s.dense[p]):
                dx, dy = s.dense[p], s.dense[2]
                ax.scatter([dx], [dy], marker="*", s=260, color=color, edgecolor="k", linewidth=0.8, zorder=5)
                ax.axhline(dy, color=color, lw=0.8, ls=":", alpha=0.7, zorder=1)
                labels[p].append(("dense", dx, dy, color))
    for ax, xlabel in zip(axes, (f"CPU latency, batch {batch_size} (ms)", "weights (MB, log scale)"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.1)  # room for the labels of the outermost points
    axes[1].set_xscale("log")
    _plain_log_ticks(axes[1])
    handles = [
        Line2D([], [], color=colors[i % len(colors)], marker="o", lw=1.5, label=s.label) for i, s in enumerate(series)
    ]
    handles += [
        Line2D([], [], color="grey", marker="o", ls="", label="pruned variant (x = compression)"),
        Line2D([], [], color="grey", lw=1.5, alpha=0.6, label="Pareto front"),
        Line2D([], [], color="grey", marker="*", ms=13, mec="k", ls=":", label="dense model (its accuracy dotted)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.canvas.draw()  # settles the data limits, so label positions are computed in final pixels
    for ax, pts in zip(axes, labels, strict=True):
        _place_labels(fig, ax, pts)
    return fig


def _plain_log_ticks(ax: Any) -> None:
    """A few major ticks at 1, 2, 5 x 10^k written as plain numbers; unlabelled minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


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


# label positions tried around a point, in points: right, above, below, left, then the diagonals, then further out
_OFFSETS = [(6, -3), (0, 7), (0, -13), (-8, -3), (6, 6), (6, -12), (-8, 6), (-8, -12)]
_OFFSETS += [(dx * 2.6, dy * 2.6) for dx, dy in _OFFSETS[:4]] + [(dx * 4, dy * 4) for dx, dy in _OFFSETS[4:]]


def _place_labels(fig: Any, ax: Any, points: Sequence[tuple[str, float, float, str]]) -> None:
    """Label every point legibly: points closer than a few pixels share one label (``x4, x8``); each label takes the
    first position around its point that overlaps no other label, point or the axes' edge (far ones get a leader
    line)."""
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    groups: list[tuple[list[str], float, float, str, tuple[float, float]]] = []
    for name, x, y, color in points:
        if math.isnan(x) or math.isnan(y):
            continue
        px = tuple(to_px((x, y)))
        for g in groups:
            if g[3] == color and math.dist(g[4], px) < 7:
                g[0].append(name)
                break
        else:
            groups.append(([name], x, y, color, px))
    dot = 6.0  # half a marker, in pixels
    taken = [(px[0] - dot, px[1] - dot, px[0] + dot, px[1] + dot) for *_, px in groups]
    frame = ax.get_window_extent(renderer)
    scale = fig.dpi / 72
    for names, x, y, color, _px in sorted(groups, key=lambda g: (g[0][0] != "dense", g[1])):
        text = ", ".join(names)
        best = None
        for dx, dy in _OFFSETS:
            ann = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, color="k", zorder=6,
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": color, "lw": 0.6, "alpha": 0.9},
                arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6} if abs(dx) + abs(dy) > 30 else None,
            )  # fmt: skip
            bb = ann.get_window_extent(renderer)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
            if inside and not any(_overlap(box, t, 1.0 * scale) for t in taken):
                best = box
                break
            ann.remove()
        if best is None:  # nowhere free: keep the first position (still legible on its white box)
            ann = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=_OFFSETS[0], fontsize=7, zorder=6,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": color, "lw": 0.6, "alpha": 0.9},
            )  # fmt: skip
            bb = ann.get_window_extent(renderer)
            best = (bb.x0, bb.y0, bb.x1, bb.y1)
        taken.append(best)


def _overlap(a: tuple[float, ...], b: tuple[float, ...], pad: float) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad
