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
    stored = json.loads((run / "timelines" / "round-1.json").read_text())
    assert stored["nodes"]["7"]["intervals"][0]["phase"] == "device"
    assert stored["nodes"]["8"]["local"] is True  # trained locally: drawn too
    assert "timeline" not in (run / "nodes.json").read_text()
    for png in ("run.png", "round-times.png", "gantt-round-1.png"):
        assert (run / png).stat().st_size > 1000
    (run / "gantt-round-1.png").unlink()
    assert cli_main(["plot", str(run), "--round", "1"]) == 0
    assert (run / "gantt-round-1.png").exists()
    assert cli_main(["plot", str(tmp_path / "nope")]) == 1


def test_round_timelines_put_nodes_on_the_round_clock_with_offsets_partition_labels_and_local_nodes():
    """A node whose timeline started 24 s after the round is shifted by 24 s; a node without a timeline (it trained
    locally) gets one device bar of its training time; nodes are named and ordered by partition, not node id."""
    from edgeflower.runlog import round_timelines

    ivs = json.dumps([{"phase": "device", "start": 0.0, "end": 1.0, "batch": 0, "micro": 0, "what": "fwd"}])
    now = 1_000_100.0  # the round took 100 s: it started at 1_000_000
    replies = {
        9_000_000_000_000_000_001: {"partition-id": 10, "timeline": ivs, "timeline-origin-unix": 1_000_024.0},
        9_000_000_000_000_000_002: {"partition-id": 2, "train-time-s": 30.0, "timeline-origin-unix": 1_000_000.5},
        9_000_000_000_000_000_003: {"train-time-s": 5.0},  # an old client: no partition, no origin
    }
    out = round_timelines(replies, 100.0, now)
    assert out["round-s"] == 100.0
    nodes = list(out["nodes"].values())
    assert [n["label"] for n in nodes] == ["partition 2", "partition 10", "node 9000000000000000003"]
    assert nodes[1]["offset-s"] == pytest.approx(24.0) and nodes[1]["local"] is False
    assert nodes[0]["local"] is True and nodes[0]["intervals"][0]["end"] == 30.0
    assert nodes[0]["offset-s"] == pytest.approx(0.5) and nodes[2]["offset-s"] == 0.0


def test_gantt_and_round_times_accept_round_clock_entries(tmp_path):
    from edgeflower.plotting import plot_gantt, plot_round_times

    entry = {"label": "partition 1", "offset-s": 3.0, "local": False,
             "intervals": [{"phase": "uplink", "start": 0.0, "end": 1.0}]}  # fmt: skip
    local = {"label": "partition 0", "offset-s": 0.0, "local": True,
             "intervals": [{"phase": "device", "start": 0.0, "end": 2.0, "what": "local"}]}  # fmt: skip
    assert plot_gantt({"a": entry, "b": local}, tmp_path / "g.png", round_s=4.0).stat().st_size > 1000
    times = {1: {"a": 2.0, "b": 2.0}, 2: {"a": 1.0, "b": 3.0}}
    out = plot_round_times(times, tmp_path / "r.png", {"a": "partition 0", "b": "partition 1"})
    assert out.stat().st_size > 1000
