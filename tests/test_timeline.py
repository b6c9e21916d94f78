"""The per-phase timeline and the pictures drawn from it."""

from __future__ import annotations

import json
import time

import pytest

from edgeflower.cli import main as cli_main
from edgeflower.runlog import RunLog
from edgeflower.timeline import Timeline


def test_busy_time_merges_overlaps_idle_is_span_minus_busy_and_utilisation_is_busy_over_span():
    tl = Timeline()
    o = tl.origin
    tl.add("device", o + 0.0, o + 1.0)
    tl.add("device", o + 0.5, o + 1.5)  # overlaps the first
    tl.add("server", o + 2.0, o + 3.0)
    tl.add("uplink", o + 1.5, o + 2.0)
    totals = tl.totals()
    assert totals["device-s"] == pytest.approx(1.5)
    assert totals["span-s"] == pytest.approx(3.0)
    assert totals["server-idle-s"] == pytest.approx(2.0)
    assert totals["device-idle-s"] == pytest.approx(1.5)
    assert totals["uplink-utilisation"] == pytest.approx(0.5 / 3.0)
    assert totals["downlink-utilisation"] == 0.0
    assert Timeline().totals()["uplink-utilisation"] == 0.0  # empty round: no division by zero
    with pytest.raises(ValueError, match="unknown phase"):
        tl.add("gpu", o, o + 1)


def test_timeline_json_round_trip_and_span_context():
    tl = Timeline()
    with tl.span("device", batch=2, what="fwd"):
        time.sleep(0.01)
    again = Timeline.from_json(tl.to_json())
    assert again == tl.intervals and again[0].batch == 2 and again[0].seconds >= 0.01


def test_run_log_stores_timelines_and_plot_command_draws_gantt(tmp_path):
    tl = Timeline()
    o = tl.origin
    tl.add("device", o, o + 0.2, 0, what="fwd")
    tl.add("uplink", o + 0.2, o + 0.3, 0)
    tl.add("server", o + 0.3, o + 0.5, 0)
    tl.add("downlink", o + 0.5, o + 0.6, 0)
    log = RunLog(tmp_path, "run", {"mode": "split"})
    log.update(0, **{"test-accuracy": 0.1})
    replies = {7: {"train-time-s": 0.6, "timeline": tl.to_json()}, 8: {"train-time-s": 0.7}}
    log.on_train_round(1, 0.8, replies, {"train-loss": 1.0})
    log.update(1, **{"test-accuracy": 0.5})
    run = log.finish()
    assert json.loads((run / "timelines" / "round-1.json").read_text())["7"][0]["phase"] == "device"
    assert "timeline" not in (run / "nodes.json").read_text()
    for png in ("run.png", "round-times.png", "gantt-round-1.png"):
        assert (run / png).stat().st_size > 1000
    (run / "gantt-round-1.png").unlink()
    assert cli_main(["plot", str(run), "--round", "1"]) == 0
    assert (run / "gantt-round-1.png").exists()
    assert cli_main(["plot", str(tmp_path / "nope")]) == 1
