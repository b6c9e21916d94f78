"""The emulated FedAdapt testbed's run-config strings."""

from __future__ import annotations

import pytest

from edgeflower.planning import fedadapt_testbed, parse_link_schedules


def test_fedadapt_testbed_round_trips_through_run_config():
    bed = fedadapt_testbed(drop_round=6)
    assert [n.name for n in bed.nodes] == ["pi3-a", "pi3-b", "pi4-a", "pi4-b", "jetson"]
    cfg = bed.run_config()
    assert cfg["device-profiles"] == "8,8,4,4,2"
    schedules = parse_link_schedules(cfg["link-schedules"])
    for i, node in enumerate(bed.nodes):
        for rnd in (1, 5, 6, 10):
            assert schedules[i].at(rnd) == node.link.at(rnd)
    assert schedules[1].at(6).uplink_mbps == 5.0 and schedules[0].at(6).uplink_mbps == 75.0
    with pytest.raises(ValueError, match="round:up/down"):
        parse_link_schedules("1:75/75/0|x")
