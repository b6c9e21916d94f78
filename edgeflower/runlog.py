"""A run directory: the configuration, per-round metrics as JSON and CSV, and a PNG of the run."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "round_timelines", "run_folder"]


def run_folder(root: str | Path, run_id: int | None) -> Path:
    """The folder the edgeflower ServerApp wrote for Flower run ``run_id`` under ``root`` (``*-run<run_id>``).

    Raises
    ------
    FileNotFoundError
        When ``root`` holds no folder of that run.
    """
    matches = sorted(Path(root).glob(f"*-run{run_id}"))
    if run_id is None or len(matches) != 1:
        raise FileNotFoundError(f"no single run folder of run {run_id} in {root}: {[m.name for m in matches]}")
    return matches[0]


def round_timelines(replies: dict[int, dict[str, Any]], seconds: float, now_unix: float) -> dict[str, Any]:
    """A round's timelines on the round's own clock: ``{"round-s", "nodes": {node: {label, offset-s, local,
    intervals}}}``.

    The round started ``seconds`` before ``now_unix`` (the server's wall clock when the round's replies were
    aggregated); a node's intervals are shifted by ``offset-s``, its timeline's wall-clock origin
    (``timeline-origin-unix``) minus the round's start, so a node that started late is drawn late. A node that
    trained locally (no ``timeline``) gets one ``device`` interval of its ``train-time-s``, marked ``local``. Nodes
    are labelled by partition (``partition-id`` of their reply), else by node id. Without an origin (older clients)
    the offset is 0.
    """
    start = now_unix - seconds
    nodes: dict[str, Any] = {}
    for node, metrics in replies.items():
        raw = metrics.get("timeline")
        if isinstance(raw, str):
            intervals, local = json.loads(raw), False
        elif "train-time-s" in metrics:
            intervals = [{"phase": "device", "start": 0.0, "end": float(metrics["train-time-s"]), "what": "local"}]
            local = True
        else:
            continue
        origin = metrics.get("timeline-origin-unix")
        offset = max(0.0, float(origin) - start) if origin is not None else 0.0
        label = f"partition {int(metrics['partition-id'])}" if "partition-id" in metrics else f"node {node}"
        nodes[str(node)] = {"label": label, "offset-s": round(offset, 4), "local": local, "intervals": intervals}
    ordered = sorted(nodes.items(), key=lambda kv: (len(kv[1]["label"]), kv[1]["label"]))  # partition 2 < 10
    return {"round-s": round(seconds, 4), "nodes": dict(ordered)}


class RunLog:
    """Collect per-round metrics of one run and keep them on disk.

    Writes ``config.json``, ``metrics.json`` (a list of per-round rows), ``metrics.csv``, ``nodes.json`` (per-node
    reply metrics per round), ``timelines/round-<n>.json`` (per-node phase intervals, in split modes) and, on
    :meth:`finish`, ``run.png`` (accuracy, loss and round time per round) plus the plots of
    :func:`edgeflower.plotting.plot_run_dir`.

    Parameters
    ----------
    root : str or Path
        Parent directory; the run gets ``root/<name>``.
    name : str
        Folder name of this run (e.g. ``"20261125-170102-run42"``).
    config : dict
        The run configuration, written as ``config.json``.
    """

    def __init__(self, root: str | Path, name: str, config: dict[str, Any]) -> None:
        self.path = Path(root) / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.rows: dict[int, dict[str, Any]] = {}
        self.nodes: dict[int, dict[int, dict[str, Any]]] = {}
        self._t0 = time.perf_counter()
        (self.path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    def update(self, server_round: int, **values: Any) -> None:
        """Merge ``values`` into the row of ``server_round`` and rewrite the metric files."""
        row = self.rows.setdefault(server_round, {"round": server_round})
        row.update(values)
        row["elapsed-s"] = round(time.perf_counter() - self._t0, 3)
        self._write()

    def on_train_round(
        self, server_round: int, seconds: float, replies: dict[int, dict[str, Any]], aggregated: dict[str, Any]
    ) -> None:
        """:class:`~edgeflower.strategies.edge.RoundRecorder` hook: record round time and node metrics.

        A node's ``timeline`` value (JSON intervals, see :mod:`edgeflower.timeline`) goes to
        ``timelines/round-<n>.json`` instead of ``nodes.json``, on the round's own clock (:func:`round_timelines`).
        """
        timelines = round_timelines(replies, seconds, time.time())
        clean: dict[int, dict[str, Any]] = {}
        for node, metrics in replies.items():
            metrics = dict(metrics)
            metrics.pop("timeline", None)
            clean[node] = metrics
        if timelines["nodes"]:
            folder = self.path / "timelines"
            folder.mkdir(exist_ok=True)
            (folder / f"round-{server_round}.json").write_text(json.dumps(timelines))
        self.nodes[server_round] = clean
        values: dict[str, Any] = {"round-time-s": round(seconds, 4), "nodes": len(replies)}
        values.update({f"train-{k}" if not k.startswith("train-") else k: v for k, v in aggregated.items()})
        self.update(server_round, **values)

    def on_round_outcome(self, outcome: Any) -> None:
        """Record a round's failed and fallen-back nodes (a :class:`~edgeflower.strategies.edge.RoundOutcome`):
        ``nodes-failed`` and ``nodes-fell-back`` in the round's row, the failures' messages in ``failures.json``."""
        if outcome.failures:
            path = self.path / "failures.json"
            failures = json.loads(path.read_text()) if path.is_file() else {}
            failures[str(outcome.server_round)] = [{"node": n, "message": m} for n, m in outcome.failures]
            path.write_text(json.dumps(failures, indent=2))
        counts = {"nodes-failed": len(outcome.failures), "nodes-fell-back": len(outcome.fell_back)}
        self.update(outcome.server_round, **counts)

    def _write(self) -> None:
        rows = [self.rows[k] for k in sorted(self.rows)]
        (self.path / "metrics.json").write_text(json.dumps(rows, indent=2))
        (self.path / "nodes.json").write_text(
            json.dumps({str(r): {str(n): m for n, m in v.items()} for r, v in self.nodes.items()}, indent=2)
        )
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        with open(self.path / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    def finish(self) -> Path:
        """Draw ``run.png`` and return the run directory."""
        from edgeflower.plotting import plot_run_dir  # matplotlib: only a finished run pays for it

        plot_run_dir(self.path)
        return self.path
