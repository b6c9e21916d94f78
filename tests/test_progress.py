"""Progress lines while a round runs, and the warning for a long round (clocks injected: logic, not speed)."""

from __future__ import annotations

import pytest

from edgeflower.progress import BatchProgress, format_seconds, slow_round_warning


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_at_most_every_interval_with_pace_and_time_left_and_always_the_last_batch():
    clock, lines = FakeClock(), []
    progress = BatchProgress(
        "round 1, partition 1", total=10, every_s=10.0, clock=clock, emit=lambda lvl, t: lines.append(t)
    )
    for done in range(1, 11):
        clock.now += 4.0  # 4 s per batch
        progress.update(done)
    # 40 s of batches at 4 s each: a line at 12 s (batch 3), 24 s (6), 36 s (9) and the last batch
    assert len(lines) == 4
    assert lines[0] == "round 1, partition 1: batch 3/10 (30 %), 4.00 s/batch, about 28 s left"
    assert lines[-1] == "round 1, partition 1: 10 batches done in 40 s (4.00 s/batch)"


def test_progress_without_a_total_reports_pace_only_and_notes_are_appended():
    clock, lines = FakeClock(), []
    progress = BatchProgress("p", total=0, every_s=1.0, clock=clock, emit=lambda lvl, t: lines.append(t))
    clock.now += 2.0
    assert progress.update(1, "training locally") == "p: batch 1, 2.00 s/batch (training locally)"
    assert progress.update(2) is None  # no time passed
    with pytest.raises(ValueError, match="every_s"):
        BatchProgress("p", 1, every_s=0)


def test_slow_round_warning_names_the_slowest_node_only_above_the_threshold():
    assert slow_round_warning({"a": 100.0, "b": 170.0}, threshold_s=180.0) is None
    text = slow_round_warning({"partition 0": 60.0, "partition 1 (link 5/5)": 3116.0}, threshold_s=180.0)
    assert "about 51.9 min" in text and "partition 1 (link 5/5)" in text and "max-batches" in text
    assert slow_round_warning({}) is None
    assert [format_seconds(s) for s in (42, 210, 3 * 3600)] == ["42 s", "3.5 min", "3.0 h"]


def test_round_forecast_counts_batches_from_partition_size_and_max_batches():
    import tomllib
    from pathlib import Path

    from edgeflower.app.forecast import batches_per_round
    from edgeflower.config import AppConfig

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as fh:
        defaults = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    cfg = AppConfig.from_run_config(defaults)
    assert batches_per_round(cfg, 4) == 150  # 60 000 / 4 partitions / batch 100
    capped = AppConfig.from_run_config({**defaults, "max-batches": 10, "local-epochs": 2})
    assert batches_per_round(capped, 4) == 20
