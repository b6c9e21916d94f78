"""The real-network testbed: the app runs through Flower's Deployment Engine across network namespaces, its offload
traffic over kernel-shaped links to a TLS edge server, and nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from edgeflower.runlog import run_folder
from edgeflower.testbed import PrivilegeError, Testbed, require_privileges
from edgeflower.testbed.faults import host_bytes
from edgeflower.testbed.fixture import testbed_factory  # noqa: F401 (the fixture)
from edgeflower.testbed.links import app_link_config, device_schedules
from edgeflower.testbed.netns import namespace_exists
from edgeflower.testbed.topology import tbf_args
from tests.conftest import ROOT

TINY = {"mode": "split", "num-rounds": 2, "model-width": 0.25, "max-batches": 2, "eval-samples": 100, "norm": "group"}


def test_without_root_the_testbed_says_so_and_starts_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="needs root"):
        require_privileges()
    tb = Testbed(tmp_path)
    with pytest.raises(PrivilegeError):
        tb.start()
    assert not any(namespace_exists(ns) for ns in tb.topology.namespaces)


def test_links_come_from_the_emulator_settings_bandwidth_to_the_kernel_latency_to_the_code():
    scheds = device_schedules({"link-schedules": "1:50/40/5|2:10/10/5;1:20/20/0"}, 3)
    assert [s.at(1).uplink_mbps for s in scheds] == [50, 20, 50]
    assert scheds[0].at(2).downlink_mbps == 10
    app = app_link_config(scheds)
    assert app["link-profiles"] == "" and app["link-trace"] == ""
    assert app["link-schedules"] == "1:0/0/5|2:0/0/5;1:0/0/0;1:0/0/5|2:0/0/5"
    assert device_schedules({"link-profiles": "10/5/3"}, 2)[1].at(7).downlink_mbps == 5
    assert tbf_args(10)[:2] == ["rate", "10000kbit"]
    with pytest.raises(ValueError):
        tbf_args(0)


@pytest.mark.slow
def test_app_runs_on_the_testbed_over_shaped_links_and_teardown_leaves_nothing(testbed_factory):  # noqa: F811
    tb = testbed_factory(num_edges=1, num_devices=2, link_config={"link-profiles": "20/20/2"})
    up, down = tb.topology.qdisc_rates("dev-0")
    assert "tbf" in up and "20Mbit" in up and "20Mbit" in down
    assert "htb" in up and "htb" in down  # the queue under the rate lets ACKs pass bulk data
    sent_before = host_bytes(tb.topology.host("dev-0").namespace)[1]
    outcome = tb.run(ROOT, TINY, timeout=500)
    assert outcome.ok, outcome.details + outcome.logs[-3000:]
    folder = run_folder(outcome.extra["run_dir"], outcome.run_id)
    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows][-1] == 2
    nodes = json.loads((folder / "nodes.json").read_text())
    assert sorted(nodes) == ["1", "2"] and all(len(per_node) == 2 for per_node in nodes.values())  # 2 nodes each
    for per_round in nodes.values():
        for m in per_round.values():
            assert m["fell-back"] == 0 and m["split-point"] < 5
    uplink = sum(m["uplink-bytes"] for per_round in nodes.values() for m in per_round.values()) / 2
    assert host_bytes(tb.topology.host("dev-0").namespace)[1] - sent_before > uplink * 0.5  # crossed the veth
    assert "(TLS" in tb.log_tail("edge-0", 100_000)
    namespaces = tb.topology.namespaces
    assert tb.stop() == []
    assert not any(namespace_exists(ns) for ns in namespaces)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert tb.topology.prefix not in listed


def test_testbed_edge_servers_are_named_and_know_each_other_as_their_only_migration_peers(monkeypatch, tmp_path):
    tb = Testbed(tmp_path, num_edges=2)
    tb.files = {"secret": tmp_path / "secret", "cert": tmp_path / "cert", "key": tmp_path / "key"}
    started: dict[str, list[str]] = {}
    monkeypatch.setattr(tb, "_spawn", lambda name, ns, cmd: started.setdefault(name, list(cmd)))
    edges = tb.topology.edges()
    peers = tb.edge_peers()
    assert peers == {"edge-0": f"{edges[0].address}:50051", "edge-1": f"{edges[1].address}:50051"}
    for i, h in enumerate(edges):
        tb._start_edge(i, h.namespace, h.address, peers=peers)
    tb._start_edge("loopback-edge-dev-0", "ns", "127.0.0.1", 50052)

    def flags(cmd: list[str], flag: str) -> list[str]:
        return [cmd[j + 1] for j, arg in enumerate(cmd) if arg == flag]

    assert flags(started["edge-0"], "--edge-id") == ["edge-0"]
    assert flags(started["edge-0"], "--peer") == [f"edge-1={edges[1].address}:50051"]
    assert flags(started["edge-1"], "--peer") == [f"edge-0={edges[0].address}:50051"]
    assert flags(started["edge-1"], "--peer-root-cert") == [str(tmp_path / "cert")]  # its peers serve TLS
    assert flags(started["loopback-edge-dev-0"], "--edge-id") == ["loopback-edge-dev-0"]
    assert flags(started["loopback-edge-dev-0"], "--peer") == []  # a comparison server: no migrations
