"""Device and link emulation: the times an emulated testbed waits follow its profiles (on a manual clock, so the
tests decide on the model, never on how busy the machine's scheduler is)."""

from __future__ import annotations

import json

import pytest

from edgeflower.transport.emulation import (
    TCP_FRAMING,
    DeviceProfile,
    EmulatedLink,
    LinkProfile,
    LinkSchedule,
    parse_profiles,
    profile_for,
    wait_until,
)
from tests._clock import ManualClock


def test_link_transfer_time_is_bytes_over_bandwidth_plus_latency():
    link = EmulatedLink(LinkProfile(uplink_mbps=8.0, downlink_mbps=80.0, latency_ms=20), clock=ManualClock())
    start, end = link.transmit(100_000, up=True)  # 0.1 s at 8 Mbit/s + 20 ms
    assert end - start == pytest.approx(0.12)
    start, end = link.transmit(100_000, up=False)  # 0.01 s + 20 ms
    assert end - start == pytest.approx(0.03)
    assert link.bytes == {True: 100_000, False: 100_000}


def test_transfers_in_one_direction_queue_but_latency_overlaps():
    clock = ManualClock()
    link = EmulatedLink(LinkProfile(8.0, 8.0, latency_ms=100), clock=clock)
    t0 = clock.now()
    first = link.book(50_000, up=True)  # two senders with a message ready at the same moment
    second = link.book(50_000, up=True)
    # serialisation 0.05 s each, queued: the second leaves the wire at 0.1 and arrives 0.1 later
    assert first == pytest.approx((t0, t0 + 0.15)) and second == pytest.approx((t0 + 0.05, t0 + 0.2))
    wait_until(second[1], clock)
    assert clock.now() - t0 == pytest.approx(0.2)  # not 2 * 0.15: the latencies overlap
    start, end = link.transmit(50_000, up=True)  # a transfer after them waits for the wire, then its latency
    assert start == pytest.approx(t0 + 0.2) and end == pytest.approx(t0 + 0.35)


def test_booked_transfers_from_one_sender_overlap_their_latencies():
    clock = ManualClock()
    link = EmulatedLink(LinkProfile(8.0, 8.0, latency_ms=100), clock=clock)
    t0 = clock.now()
    # one thread books five messages back to back (what a pipelining sender does): each holds the wire 0.05 s
    bookings = [link.book(50_000, up=True, ready=t0) for _ in range(5)]
    starts = [start - t0 for start, _ in bookings]
    arrivals = [arrival - t0 for _, arrival in bookings]
    assert starts == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])
    assert arrivals == pytest.approx([0.15, 0.20, 0.25, 0.30, 0.35])  # not 0.15 * (j + 1): latencies overlap
    assert clock.sleeps == [] and clock.now() == t0  # booking does not wait (0.35 s if it did)
    assert link.book(1, up=False, ready=t0)[0] == t0  # the other direction is free
    assert link.bytes == {True: 250_000, False: 1}


def test_unlimited_link_adds_no_delay():
    clock = ManualClock()
    link = EmulatedLink(clock=clock)
    assert link.profile.unlimited
    start, end = link.transmit(10**9, up=True)
    assert end == start and clock.sleeps == []


def test_device_slowdown_stretches_compute():
    clock = ManualClock()
    emulated = DeviceProfile(3.0).stretch(0.05, clock)
    assert emulated == pytest.approx(0.15)
    assert clock.sleeps == [pytest.approx(0.1)]  # the measured 0.05 s ran for real; the rest is slept
    assert DeviceProfile(1.0).stretch(0.05, clock) == 0.05 and len(clock.sleeps) == 1
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


def test_real_transfer_time_counts_towards_the_modelled_time():
    clock = ManualClock()
    link = EmulatedLink(LinkProfile(8.0, 8.0, latency_ms=20), clock=clock)
    ready = clock.now()
    clock.sleep(0.03)  # the message really went over loopback (serialisation, TLS, gRPC) in 30 ms
    start, arrival = link.deliver(100_000, up=False, ready=ready)  # modelled: 0.1 s on the wire + 20 ms
    assert (start, arrival) == pytest.approx((ready, ready + 0.12))
    assert clock.sleeps[1:] == [pytest.approx(0.09)]  # only the rest of the modelled time is waited
    assert clock.now() - ready == pytest.approx(0.12)  # max(real, modelled), not their sum (0.15)
    assert link.bytes == {True: 0, False: 100_000}


def test_a_transfer_whose_real_time_exceeds_the_modelled_time_is_not_charged_again():
    clock = ManualClock()
    link = EmulatedLink(LinkProfile(8.0, 8.0, latency_ms=20), clock=clock)
    ready = clock.now()
    clock.sleep(0.5)  # a slow real transfer (a loaded machine): longer than the modelled 0.12 s
    start, arrival = link.deliver(100_000, up=True, ready=ready)
    assert (start, arrival) == pytest.approx((ready, ready + 0.12))
    assert clock.sleeps == [0.5] and clock.now() - ready == pytest.approx(0.5)  # nothing waited on top
    # the wire was busy in the model until ready + 0.1: a transfer ready before then queues behind it
    assert link.book(100_000, up=True, ready=ready + 0.05)[0] == pytest.approx(ready + 0.1)


def test_framing_charges_the_headers_a_kernel_link_carries_too():
    clock = ManualClock()
    with pytest.raises(ValueError, match="framing"):
        EmulatedLink(framing=0.9)
    link = EmulatedLink(LinkProfile(8.0, 8.0), clock=clock, framing=TCP_FRAMING)
    start, end = link.transmit(1448 * 100, up=True)  # 100 full frames of payload: 1514 bytes each on the wire
    assert end - start == pytest.approx(1514 * 100 * 8 / 8e6)
    assert link.bytes[True] == 1448 * 100  # the payload is what the link counts
