"""Pictures of runs: accuracy, loss and round time per round, per-node round times, Gantt charts of rounds.

:func:`plot_run_dir` draws them all for a run folder (:class:`edgeflower.runlog.RunLog` calls it when a run
finishes; ``edgeflower plot RUN_DIR`` on the command line).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["gantt_figure", "plot_gantt", "plot_round_times", "plot_run", "plot_run_dir"]


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
    """Write :func:`gantt_figure` to the PNG ``path`` (see there for the parameters)."""
    fig = gantt_figure(timelines, title, round_s)
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def gantt_figure(timelines: dict[str, Any], title: str = "", round_s: float | None = None) -> Any:
    """Gantt chart of one round on the round's own clock: per node, a row per phase it used (not saved).

    Parameters
    ----------
    timelines : dict
        Node key -> intervals (:class:`edgeflower.timeline.Interval` or dicts with ``phase``, ``start``, ``end``), or
        -> ``{"label", "offset-s", "local", "intervals"}`` (:func:`edgeflower.runlog.round_timelines`): the node's
        rows are labelled ``label``, its bars shifted by ``offset-s`` (a grey line shows the wait before it started)
        and a node that trained locally is drawn hatched. A node that started late has a dotted line from 0 to its
        start, labelled ``starts at X s`` (long waits) or ``(+X s)`` after its name (short ones).
    title : str
        Figure title.
    round_s : float, optional
        The round's length as the server measured it (a dashed line).
    """
    rows = _gantt_rows(timelines)
    fig_h = max(3.0, 0.3 * len(rows) + 1.9)
    fig, ax = plt.subplots(figsize=(12, fig_h))
    x_end = max([round_s or 0.0] + [a + w for *_, spans in rows for a, w in spans] + [1e-9])
    labels = _draw_gantt_rows(ax, rows, x_end)
    if round_s:
        ax.axvline(round_s, color="k", ls="--", lw=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the round started (server clock)")
    ax.set_title(title or "round timeline")
    ax.grid(axis="x", alpha=0.3)
    handles = _gantt_legend(round_s)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / fig_h, 1, 1))  # the legend's strip below the axis label
    return fig


_GanttRow = tuple[str, str, float, bool, list[tuple[float, float]]]
"""One row of a Gantt chart: node name, phase, the node's offset (s), trained locally, ``(start, width)`` bars."""


def _gantt_rows(timelines: dict[str, Any]) -> list[_GanttRow]:
    """The chart's rows: per node, one per phase it used (and always its device row unless it trained locally)."""
    from edgeflower.timeline import PHASES

    rows: list[_GanttRow] = []
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
    return rows


def _mark_start(ax: Any, row: int, offset: float, x_end: float) -> str:
    """Draw how long a node waited before it started (on its first row); the short ``(+X s)`` label suffix, if any."""
    if offset > 0:
        ax.plot([0, offset], [row, row], color=_WAIT_COLOR, lw=2, ls=":")
    if offset >= 0.12 * x_end:
        ax.text(offset / 2, row, f"starts at {offset:.1f} s", ha="center", va="center", fontsize=7,
                color="#555", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"})  # fmt: skip
    elif offset >= 0.05:
        return f" (+{offset:.1f} s)"
    return ""


def _draw_gantt_rows(ax: Any, rows: list[_GanttRow], x_end: float) -> list[str]:
    """Draw every row's bars (a node's local training hatched, a line between nodes); the rows' labels."""
    labels, seen = [], set()
    for row, (name, phase, offset, local, spans) in enumerate(rows):
        late = ""
        if name not in seen:  # the node's first row shows how long it waited to start
            seen.add(name)
            late = _mark_start(ax, row, offset, x_end)
            if row:
                ax.axhline(row - 0.5, color="#ddd", lw=0.8)
        hatch = "//" if local and phase == "device" else None
        edge = {"edgecolor": "white", "linewidth": 0.5} if hatch else {"linewidth": 0}
        ax.broken_barh(spans, (row - 0.4, 0.8), facecolor=_PHASE_COLORS[phase], hatch=hatch, **edge)
        labels.append(f"{name}{late} {phase}" + (" (local)" if local and phase == "device" else ""))
    return labels


def _gantt_legend(round_s: float | None) -> list[Any]:
    """The legend's entries: the phases, local training, the wait before a start and (if known) the round's end."""
    from matplotlib.patches import Patch

    from edgeflower.timeline import PHASES

    handles: list[Any] = [Patch(facecolor=_PHASE_COLORS[p], label=p) for p in PHASES]
    handles.append(Patch(facecolor=_PHASE_COLORS["device"], hatch="//", edgecolor="white", label="trained locally"))
    handles.append(plt.Line2D([], [], color=_WAIT_COLOR, lw=2, ls=":", label="waiting to start"))
    if round_s:
        handles.append(plt.Line2D([], [], color="k", ls="--", lw=1, label="round ends"))
    return handles


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


def plot_run_dir(run_dir: str | Path, rounds: list[int] | None = None) -> list[Path]:
    """Draw ``run.png``, ``round-times.png`` and ``gantt-round-<n>.png`` for a run directory.

    Parameters
    ----------
    run_dir : str or Path
        A run folder written by :class:`edgeflower.runlog.RunLog`.
    rounds : list of int, optional
        Rounds to draw Gantt charts for (default: the first and the last round with a timeline).

    Returns
    -------
    list of Path
        The PNG files written.
    """
    path = Path(run_dir)
    metrics = path / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no metrics.json)")
    rows = json.loads(metrics.read_text())
    written = [plot_run(rows, path / "run.png")]
    nodes_file = path / "nodes.json"
    if nodes_file.is_file():
        nodes = json.loads(nodes_file.read_text())
        per_node = {
            int(r): {n: float(m["train-time-s"]) for n, m in v.items() if "train-time-s" in m} for r, v in nodes.items()
        }
        labels = {
            n: f"partition {int(m['partition-id'])}"
            for v in nodes.values()
            for n, m in v.items()
            if "partition-id" in m
        }
        if any(per_node.values()):
            written.append(plot_round_times(per_node, path / "round-times.png", labels))
    tl_dir = path / "timelines"
    available = sorted(int(p.stem.split("-")[1]) for p in tl_dir.glob("round-*.json")) if tl_dir.is_dir() else []
    wanted = rounds if rounds is not None else sorted({available[0], available[-1]}) if available else []
    for rnd in wanted:
        file = tl_dir / f"round-{rnd}.json"
        if not file.is_file():
            raise FileNotFoundError(f"no timeline for round {rnd} in {tl_dir}")
        data = json.loads(file.read_text())
        if "nodes" in data:  # on the round's clock (edgeflower.runlog.round_timelines)
            timelines, round_s = data["nodes"], data.get("round-s")
        else:  # older runs: each node on its own clock
            timelines, round_s = {f"node {n}": ivs for n, ivs in data.items()}, None
        title = f"round {rnd}: every node's phases on the round's clock"
        written.append(plot_gantt(timelines, path / f"gantt-round-{rnd}.png", title=title, round_s=round_s))
    return written
