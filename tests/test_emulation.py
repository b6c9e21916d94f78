"""Device and link emulation: measured times follow the emulated testbed."""

from __future__ import annotations

import json
import threading
import time

import pytest

from edgeflower.transport.emulation import (
    DeviceProfile,
    EmulatedLink,
    LinkProfile,
    LinkSchedule,
    parse_profiles,
    profile_for,
)

EPS = 1e-3  # a sleep never ends early; perf_counter rounding
SLACK = 0.1  # a sleep may end late when the two cores are busy: these tests check the model, not the scheduler


def test_link_transfer_time_is_bytes_over_bandwidth_plus_latency():
    link = EmulatedLink(LinkProfile(uplink_mbps=8.0, downlink_mbps=80.0, latency_ms=20))
    start, end = link.transmit(100_000, up=True)  # 0.1 s at 8 Mbit/s + 20 ms
    assert 0.12 - EPS <= end - start < 0.12 + SLACK
    start, end = link.transmit(100_000, up=False)  # 0.01 s + 20 ms
    assert 0.03 - EPS <= end - start < 0.03 + SLACK
    assert link.bytes == {True: 100_000, False: 100_000}


def test_transfers_in_one_direction_queue_but_latency_overlaps():
    link = EmulatedLink(LinkProfile(8.0, 8.0, latency_ms=100))
    ends: list[float] = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda: ends.append(link.transmit(50_000, True)[1])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # serialisation 0.05 s each, queued: last ends at 0.1 + 0.1 latency (not 2 * 0.15)
    assert 0.2 - EPS <= max(ends) - t0 < 0.2 + SLACK


def test_booked_transfers_from_one_sender_overlap_their_latencies():
    link = EmulatedLink(LinkProfile(8.0, 8.0, latency_ms=100))
    t0 = time.perf_counter()
    # one thread books five messages back to back (what a pipelining sender does): each holds the wire 0.05 s
    bookings = [link.book(50_000, up=True, ready=t0) for _ in range(5)]
    starts = [start - t0 for start, _ in bookings]
    arrivals = [arrival - t0 for _, arrival in bookings]
    assert starts == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])
    assert arrivals == pytest.approx([0.15, 0.20, 0.25, 0.30, 0.35])  # not 0.15 * (j + 1): latencies overlap
    assert time.perf_counter() - t0 < SLACK  # booking does not wait (0.35 s if it did)
    assert link.book(1, up=False, ready=t0)[0] == t0  # the other direction is free
    assert link.bytes == {True: 250_000, False: 1}


def test_unlimited_link_adds_no_delay():
    link = EmulatedLink()
    assert link.profile.unlimited
    start, end = link.transmit(10**9, up=True)
    assert end - start < 0.01


def test_device_slowdown_stretches_compute():
    t0 = time.perf_counter()
    emulated = DeviceProfile(3.0).stretch(0.05)
    assert emulated == pytest.approx(0.15)
    assert 0.1 - EPS <= time.perf_counter() - t0 < 0.1 + SLACK
    with pytest.raises(ValueError, match=r">= 1\.0"):
        DeviceProfile(0.5)


def test_link_schedule_changes_by_round_and_by_time():
    fast, slow = LinkProfile(75, 75), LinkProfile(5, 5)
    by_round = LinkSchedule(((1, fast), (3, slow)))
    assert [by_round.at(r).uplink_mbps for r in (1, 2, 3, 9)] == [75, 75, 5, 5]
    by_time = LinkSchedule(((0, fast), (10.0, slow)), by="time")
    assert by_time.at(elapsed_s=9.9) == fast and by_time.at(elapsed_s=10) == slow
    with pytest.raises(ValueError, match="sorted"):
        LinkSchedule(((3, fast), (1, slow)))


def test_link_trace_files_load_from_json_and_csv(tmp_path):
    js = tmp_path / "trace.json"
    js.write_text(
        json.dumps(
            {
                "by": "round",
                "points": [
                    {"round": 1, "uplink": 75, "downlink": 75, "latency": 5},
                    {"round": 4, "uplink": 5, "downlink": 5},
                ],
            }
        )
    )
    assert LinkSchedule.load(js).at(5) == LinkProfile(5, 5, 0)
    csv = tmp_path / "trace.csv"
    csv.write_text("time,uplink,downlink,latency\n0,50,50,1\n30,10,10,20\n")
    sched = LinkSchedule.load(csv)
    assert sched.by == "time" and sched.at(elapsed_s=31) == LinkProfile(10, 10, 20)
    bad = tmp_path / "bad.csv"
    bad.write_text("round,up\n1,2\n")
    with pytest.raises(ValueError, match="bad link trace row"):
        LinkSchedule.load(bad)
    with pytest.raises(ValueError, match="cannot read"):
        LinkSchedule.load(tmp_path / "missing.json")


def test_profile_strings_parse_per_node_and_reject_garbage():
    links = parse_profiles("50/50/5, 10/20", "link")
    assert links[0] == LinkProfile(50, 50, 5) and links[1] == LinkProfile(10, 20, 0)
    assert profile_for(links, 3, None) == links[1]  # cycles
    assert profile_for({}, 3, "default") == "default"
    assert parse_profiles("1, 4.5", "device")[1] == DeviceProfile(4.5)
    with pytest.raises(ValueError, match="bad link profile"):
        parse_profiles("fast", "link")
    with pytest.raises(ValueError, match="bad device profile"):
        parse_profiles("0.5", "device")
    with pytest.raises(ValueError, match="bad link profile"):
        parse_profiles("-1/2/3", "link")
