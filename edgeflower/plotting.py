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
        _integer_rounds(ax)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


_PHASE_COLORS = {"device": "#2a7", "uplink": "#37c", "server": "#d73", "downlink": "#a5c"}
_WAIT_COLOR = "#bbb"


def _integer_rounds(ax: Any) -> None:
    """Round numbers are integers: no 1.2, 1.4 ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _node_entry(value: Any) -> tuple[str | None, float, bool, Sequence[Any]]:
    """``(label, offset, local, intervals)`` of a Gantt entry: a dict (see :func:`edgeflower.runlog.round_timelines`)
    or a plain list of intervals (offset 0)."""
    if isinstance(value, dict):
        return value.get("label"), float(value.get("offset-s", 0.0)), bool(value.get("local")), value["intervals"]
    return None, 0.0, False, value


def _field(iv: Any, name: str) -> Any:
    return iv[name] if isinstance(iv, dict) else getattr(iv, name)


def plot_gantt(timelines: dict[str, Any], path: str | Path, title: str = "", round_s: float | None = None) -> Path:
    """Gantt chart of one round on the round's own clock: per node, a row per phase it used.

    Parameters
    ----------
    timelines : dict
        Node key -> intervals (:class:`edgeflower.timeline.Interval` or dicts with ``phase``, ``start``, ``end``), or
        -> ``{"label", "offset-s", "local", "intervals"}`` (:func:`edgeflower.runlog.round_timelines`): the node's
        rows are labelled ``label``, its bars shifted by ``offset-s`` (a grey line shows the wait before it started)
        and a node that trained locally is drawn hatched.
    path : str or Path
        Output PNG.
    title : str
        Figure title.
    round_s : float, optional
        The round's length as the server measured it (a dashed line).
    """
    from matplotlib.patches import Patch

    from edgeflower.timeline import PHASES

    rows: list[tuple[str, str, float, bool, list[tuple[float, float]]]] = []
    for key, value in timelines.items():
        label, offset, local, intervals = _node_entry(value)
        name = label or str(key)
        for phase in PHASES:
            spans = [
                (offset + _field(iv, "start"), max(_field(iv, "end") - _field(iv, "start"), 1e-4))
                for iv in intervals
                if _field(iv, "phase") == phase
            ]
            if spans or (phase == "device" and not local):
                rows.append((name, phase, offset, local or any(_what(iv) == "local" for iv in intervals), spans))
    fig_h = max(2.8, 0.3 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=(12, fig_h))
    labels, seen = [], set()
    for row, (name, phase, offset, local, spans) in enumerate(rows):
        if name not in seen:  # the node's first row shows how long it waited to start
            seen.add(name)
            if offset > 0:
                ax.plot([0, offset], [row, row], color=_WAIT_COLOR, lw=2, ls=":")
            if row:
                ax.axhline(row - 0.5, color="#ddd", lw=0.8)
        hatch = "//" if local and phase == "device" else None
        edge = {"edgecolor": "white", "linewidth": 0.5} if hatch else {"linewidth": 0}
        ax.broken_barh(spans, (row - 0.4, 0.8), facecolor=_PHASE_COLORS[phase], hatch=hatch, **edge)
        labels.append(f"{name} {phase}" + (" (local)" if local and phase == "device" else ""))
    if round_s:
        ax.axvline(round_s, color="k", ls="--", lw=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the round started (server clock)")
    ax.set_title(title or "round timeline")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(facecolor=_PHASE_COLORS[p], label=p) for p in PHASES]
    handles.append(Patch(facecolor=_PHASE_COLORS["device"], hatch="//", edgecolor="white", label="trained locally"))
    handles.append(plt.Line2D([], [], color=_WAIT_COLOR, lw=2, ls=":", label="waiting to start"))
    if round_s:
        handles.append(plt.Line2D([], [], color="k", ls="--", lw=1, label="round ends"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 if fig_h < 5 else -0.06),
              ncol=len(handles), fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _what(iv: Any) -> str:
    return str(iv.get("what", "")) if isinstance(iv, dict) else str(getattr(iv, "what", ""))


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLES = ("-", "--", "-.", ":")


def plot_round_times(
    per_node: dict[int, dict[Any, float]], path: str | Path, labels: dict[Any, str] | None = None
) -> Path:
    """Training time per node and round (``per_node[round][node] = seconds``), one distinguishable line per node.

    Lines differ in colour, marker and dash, and are drawn hollow-marked and slightly apart, so nodes with equal
    times stay visible; ``labels`` names nodes (e.g. ``"partition 1"``), else their keys are used.
    """
    fig, ax = plt.subplots(figsize=(8, 3.8))
    nodes = sorted({n for v in per_node.values() for n in v}, key=lambda n: (labels or {}).get(n, str(n)))
    width = 0.25 / max(1, len(nodes) - 1) if len(nodes) > 1 else 0.0
    for i, node in enumerate(nodes):
        xs = [r for r in sorted(per_node) if node in per_node[r]]
        shift = (i - (len(nodes) - 1) / 2) * width  # side by side around the round number
        ax.plot(
            [x + shift for x in xs],
            [per_node[r][node] for r in xs],
            marker=_MARKERS[i % len(_MARKERS)],
            ls=_STYLES[i % len(_STYLES)],
            mfc="none",
            ms=7,
            lw=1.4,
            label=(labels or {}).get(node, str(node)),
        )
    ax.set(title="training time per node and round", xlabel="round", ylabel="s")
    ax.set_ylim(bottom=0)
    _integer_rounds(ax)
    if len(nodes) <= 16:
        ax.legend(fontsize="small", ncol=2 if len(nodes) > 6 else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
