"""Pictures of runs: accuracy, loss and round time per round."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_gantt", "plot_round_times", "plot_run"]


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["round"]), float(r[key])) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Plot test accuracy, test/train loss and round time against the round number.

    Parameters
    ----------
    rows : sequence of dict
        Per-round rows with ``round`` and any of ``test-accuracy``, ``test-loss``, ``train-loss``,
        ``round-time-s``.
    path : str or Path
        Output PNG.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    x, y = _series(rows, "test-accuracy")
    axes[0].plot(x, [v * 100 for v in y], marker="o")
    axes[0].set(title="test accuracy", xlabel="round", ylabel="%")
    for key in ("test-loss", "train-loss"):
        x, y = _series(rows, key)
        if x:
            axes[1].plot(x, y, marker="o", label=key)
    axes[1].set(title="loss", xlabel="round")
    axes[1].legend()
    x, y = _series(rows, "round-time-s")
    axes[2].bar(x, y)
    axes[2].set(title="round time", xlabel="round", ylabel="s")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


_PHASE_COLORS = {"device": "#2a7", "uplink": "#37c", "server": "#d73", "downlink": "#a5c"}


def plot_gantt(timelines: dict[str, Sequence[Any]], path: str | Path, title: str = "") -> Path:
    """Gantt chart of one round: for each node, a row per phase (device, uplink, server, downlink).

    Parameters
    ----------
    timelines : dict
        Node label -> intervals (:class:`edgeflower.timeline.Interval` or dicts with ``phase``, ``start``, ``end``).
    path : str or Path
        Output PNG.
    title : str
        Figure title.
    """
    from edgeflower.timeline import PHASES

    labels: list[str] = []
    fig_h = max(2.5, 0.32 * len(timelines) * len(PHASES) + 1.2)
    fig, ax = plt.subplots(figsize=(12, fig_h))
    row = 0
    for node, intervals in timelines.items():
        for phase in PHASES:
            spans = []
            for iv in intervals:
                ph = iv["phase"] if isinstance(iv, dict) else iv.phase
                if ph == phase:
                    s = iv["start"] if isinstance(iv, dict) else iv.start
                    e = iv["end"] if isinstance(iv, dict) else iv.end
                    spans.append((s, max(e - s, 1e-4)))
            ax.broken_barh(spans, (row - 0.4, 0.8), color=_PHASE_COLORS[phase])
            labels.append(f"{node} {phase}")
            row += 1
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since round start")
    ax.set_title(title or "round timeline")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_round_times(per_node: dict[int, dict[str, float]], path: str | Path) -> Path:
    """Round time per node over a run (``per_node[round][node] = seconds``)."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    nodes = sorted({n for v in per_node.values() for n in v})
    for node in nodes:
        xs = [r for r in sorted(per_node) if node in per_node[r]]
        ax.plot(xs, [per_node[r][node] for r in xs], marker="o", label=str(node))
    ax.set(title="training time per node and round", xlabel="round", ylabel="s")
    if len(nodes) <= 12:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
