"""Pictures of runs: accuracy, loss and round time per round."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_run"]


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
