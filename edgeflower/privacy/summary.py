"""The run's privacy summary: epsilon spent per node and round, and the final budget of every node.

:class:`PrivacySummary` is a :class:`~edgeflower.strategies.edge.RoundRecorder`: it reads the ``dp-*`` metrics of
every reply (``dp-scope`` and ``dp-accountant`` come as strings from the reply's ``dp`` record), logs each round's
epsilon per node and, at the end, writes ``privacy.json`` into the run directory and logs the final budget. With
central DP it also holds the central accountant's cumulative client-level epsilon per round
(:class:`~edgeflower.privacy.strategy.CentralDPAccounting`).
"""

from __future__ import annotations

import json
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common.logger import log

__all__ = ["PrivacySummary"]


class PrivacySummary:
    """Collect the ``dp-*`` reply metrics of a run.

    Parameters
    ----------
    delta : float
        The run's delta.
    target_epsilon : float
        The run's per-node budget (0 = none).
    mode : str
        ``dp`` mode.
    """

    def __init__(
        self, delta: float, target_epsilon: float, mode: str, accountant: str = "rdp", central: Any = None
    ) -> None:
        self.delta = delta
        self.target_epsilon = target_epsilon
        self.mode = mode
        self.accountant = accountant
        self.central = central
        self.rounds: dict[int, dict[str, dict[str, Any]]] = {}

    def on_train_round(
        self, server_round: int, seconds: float, replies: dict[int, dict[str, Any]], aggregated: dict[str, Any]
    ) -> None:
        """Record the round's per-node epsilon (``dp-epsilon``: spent so far, all rounds)."""
        row: dict[str, dict[str, Any]] = {}
        for node, metrics in replies.items():
            if "dp-epsilon" in metrics:
                row[str(node)] = {
                    k: v if isinstance(v, str) else float(v) for k, v in metrics.items() if k.startswith("dp-")
                }
        if not row:
            return
        self.rounds[server_round] = row
        spent = ", ".join(f"{node}: {m['dp-epsilon']:.3f}" for node, m in sorted(row.items()))
        scopes = sorted({str(m.get("dp-scope", "model")) for m in row.values()})
        log(
            INFO,
            "round %d: DP epsilon spent so far per node (delta %g, %s, scope %s): %s",
            server_round,
            self.delta,
            self.accountant,
            "/".join(scopes),
            spent,
        )

    def final(self) -> dict[str, dict[str, Any]]:
        """Per node: the last epsilon reported, its steps, and whether it stopped for lack of budget."""
        out: dict[str, dict[str, Any]] = {}
        for _, row in sorted(self.rounds.items()):
            for node, m in row.items():
                out[node] = {
                    "epsilon": m["dp-epsilon"],
                    "epsilon-rdp": m.get("dp-epsilon-rdp", m["dp-epsilon"]),
                    "epsilon-prv": m.get("dp-epsilon-prv", -1.0),
                    "scope": m.get("dp-scope", "model"),
                    "steps": m.get("dp-steps", 0.0),  # all rounds (each round's: dp-round-steps in "rounds")
                    "noise-multiplier": m.get("dp-noise-multiplier", 0.0),
                    "stopped": max(out.get(node, {}).get("stopped", 0.0), m.get("dp-stopped", 0.0)),
                }
        return out

    def finish(self, run_dir: Path | None = None) -> dict[str, Any]:
        """Log the final budget and write ``privacy.json`` into ``run_dir``; return the summary."""
        final = self.final()
        summary: dict[str, Any] = {
            "dp": self.mode,
            "accountant": self.accountant,
            "delta": self.delta,
            "target-epsilon": self.target_epsilon,
            "max-epsilon": max((v["epsilon"] for v in final.values()), default=0.0),
            "scope": sorted({v["scope"] for v in final.values()}),
            "nodes": final,
            "rounds": {str(r): row for r, row in self.rounds.items()},
        }
        if self.central is not None:
            summary["central-dp"] = self.central.summary_dict()
            log(
                INFO,
                "edgeflower: central DP final client-level epsilon %.4f at delta %g%s",
                summary["central-dp"]["epsilon"],
                summary["central-dp"]["delta"],
                f" (stopped before round {self.central.stopped_at})" if self.central.stopped_at else "",
            )
        if self.mode == "off":
            if run_dir is not None:
                (Path(run_dir) / "privacy.json").write_text(json.dumps(summary, indent=2))
            return summary
        log(
            INFO,
            "edgeflower: DP (%s) final budget: max epsilon %.4f at delta %g (%s) over %d node(s), scope %s%s",
            self.mode,
            summary["max-epsilon"],
            self.delta,
            self.accountant,
            len(final),
            "/".join(summary["scope"]) or "-",
            f" (target {self.target_epsilon:g})" if self.target_epsilon else "",
        )
        for node, v in sorted(final.items()):
            log(INFO, "    node %s: epsilon %.4f after %d steps in all rounds%s", node, v["epsilon"], v["steps"],
                " (stopped: budget exhausted)" if v["stopped"] else "")  # fmt: skip
        if run_dir is not None:
            (Path(run_dir) / "privacy.json").write_text(json.dumps(summary, indent=2))
        return summary
