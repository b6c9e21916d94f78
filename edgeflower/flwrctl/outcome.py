"""What a Flower run ended as (:class:`RunOutcome`), why it failed, and the log lines of Flower's that say nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FLOWER_NOISE", "STATUS_COMPLETED", "FlwrCtlError", "RunOutcome", "drop_flower_noise", "run_failures"]

STATUS_COMPLETED = "finished:completed"
"""Status string reported by ``flwr ls`` for a successfully completed run."""

FLOWER_NOISE = (
    "Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
    "To change federation size, use the following command:",
    "flwr federation simulation-config ",
)
"""Lines Flower's ``flwr-simulation`` process logs on every run, dropped from the streamed and fetched logs.

flwr 1.42 logs them unconditionally (``flwr/simulation/app.py``, ``run_simulation_process``), also when the size
is set: :func:`run_simulation` passes ``--federation-config num-supernodes=N``, and Flower's next line (``Federation
... (N simulated SuperNodes)``) shows N was honoured, so the "changed from 10 to 2" warning and the resize hint do
not apply. No connection option avoids them, and they are logged in Flower's process before any of our code runs,
so they are dropped where we read the log stream."""


def drop_flower_noise(text: str) -> str:
    """``text`` without the lines of :data:`FLOWER_NOISE` (every other line kept as it is)."""
    return "".join(line for line in text.splitlines(keepends=True) if not any(n in line for n in FLOWER_NOISE))


class FlwrCtlError(RuntimeError):
    """Raised when a Flower CLI invocation or process management step fails."""


@dataclass
class RunOutcome:
    """Result of a Flower run.

    Attributes
    ----------
    status : str
        Final status as reported by ``flwr ls`` (e.g. ``"finished:completed"``,
        ``"finished:failed"``, ``"finished:stopped"``), or ``"timeout"`` /
        ``"not-started"`` when the run never reached a final state.
    run_id : int | None
        The run ID assigned by the SuperLink, if the run was started.
    logs : str
        ServerApp-side logs retrieved with ``flwr log`` (in deployment mode the
        SuperNode logs are appended).
    elapsed : float
        Wall-clock seconds from submitting the run to its final status.
    details : str
        ``status-details`` reported by the SuperLink (e.g. the exception message).
    cli_output : str
        Combined stdout/stderr of the ``flwr run`` invocation.
    """

    status: str
    run_id: int | None
    logs: str = ""
    elapsed: float = 0.0
    details: str = ""
    cli_output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the run finished with ``finished:completed``."""
        return self.status == STATUS_COMPLETED


RUN_FAILURE_MARKERS = ("edgeflower: the run failed:", "nodes failed:")
"""Log lines that tell why a run failed (the ServerApp's round summaries and its final error)."""


def run_failures(outcome: RunOutcome, limit: int = 8) -> list[str]:
    """Why a run failed: its status details, then the first log lines that say so (at most ``limit``)."""
    lines = [f"run {outcome.run_id} {outcome.status}: {outcome.details}".rstrip(": ")]
    for line in outcome.logs.splitlines():
        if len(lines) > limit:
            break
        if not any(m in line for m in RUN_FAILURE_MARKERS):
            continue
        core = line.split("nodes failed:", 1)[-1].strip()  # the nodes' messages: shown once
        if not any(core in shown for shown in lines):
            lines.append(line.strip())
    return lines
