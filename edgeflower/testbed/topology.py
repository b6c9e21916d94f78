"""The testbed's network: one namespace per host, all joined to a bridge in a hub namespace, device links shaped.

::

    [link: SuperLink 10.200.0.1]──┐
    [edge-0: 10.200.0.10] ────────┤ br0 (hub namespace)
    [dev-0: 10.200.0.100] ═tbf════┤     the device's uplink: tbf on its eth0; downlink: tbf on its port p-dev-0
    [dev-1: 10.200.0.101] ═tbf════┘

Addresses live only on the veths inside these namespaces: nothing is routed to or from the caller's network, and
deleting the namespaces removes every link and qdisc with them.

Each shaped direction is a ``tbf`` (the rate) whose queue lets pure ACKs and window updates (packets under
:data:`ACK_BYTES`) pass the bulk data queued in that direction (an ``htb`` child with two priorities and a ``u32``
filter, as a router that prioritises ACKs does). Without that, in a pipelined round (activations going up while
gradients come down over one TCP connection) the ACKs of one direction wait behind up to a second of the other's
queued data, and the round measured 1.2-1.3x the in-code emulation's time, whose directions are independent.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from edgeflower.testbed.netns import NetnsError, ip, namespace_exists, tc
from edgeflower.transport.emulation import LinkProfile

__all__ = ["SUBNET", "Host", "Topology", "tbf_args"]

SUBNET = "10.200.0"
"""The /24 every testbed uses (inside its own namespaces only, so testbeds never clash)."""
HOST_IFACE = "eth0"
BRIDGE = "br0"
MIN_BURST_BYTES = 4 * 1514
"""tbf's bucket: at least a few full frames (a bucket smaller than a frame stalls the link)."""
BURST_S = 0.002
"""tbf's bucket in seconds of the rate: the burst a link lets through at line speed after an idle moment."""
QUEUE_S = 1.0
"""tbf's queue in seconds of the rate: deep enough that TCP is paced by the rate, not by drops."""


ACK_BYTES = 128
"""IP packets shorter than this (pure TCP ACKs, HTTP/2 window updates) skip the bulk data queued in their direction."""


def tbf_args(mbps: float) -> list[str]:
    """``tbf`` parameters for a link of ``mbps`` Mbit/s (rate, bucket, queue limit)."""
    if not mbps > 0:
        raise ValueError(f"a shaped link needs a bandwidth > 0 Mbit/s, got {mbps}")
    rate_bytes = mbps * 1e6 / 8
    burst = max(MIN_BURST_BYTES, int(rate_bytes * BURST_S))
    limit = max(4 * burst, int(rate_bytes * QUEUE_S))
    return ["rate", f"{mbps * 1000:.0f}kbit", "burst", str(burst), "limit", str(limit)]


@dataclass
class Host:
    """One host of the testbed: its namespace, role, address and (devices only) its shaped link.

    Attributes
    ----------
    name : str
        ``link``, ``edge-<i>`` or ``dev-<i>``.
    namespace : str
        The network namespace (``<prefix>-<name>``).
    address : str
        Its IPv4 address on ``eth0``.
    port : str
        Its veth's peer in the hub namespace (the switch port).
    link : LinkProfile or None
        Kernel-shaped bandwidth of a device's up/downlink (``None`` or 0 Mbit/s: unshaped).
    """

    name: str
    namespace: str
    address: str
    port: str
    link: LinkProfile | None = None

    @property
    def role(self) -> str:
        """``link``, ``edge`` or ``device``."""
        return {"dev": "device"}.get(self.name.split("-")[0], self.name.split("-")[0])


@dataclass
class Topology:
    """A star of namespaces around a bridge; :meth:`create` builds it, :meth:`destroy` removes every trace.

    Parameters
    ----------
    num_edges, num_devices : int
        Edge-server hosts and device hosts (one SuperLink host always).
    links : list of LinkProfile
        Device ``i``'s link is ``links[i % len(links)]`` (empty: unshaped). Latency is not applied by the kernel
        (``netem`` is missing on these kernels); the testbed leaves it to the in-code emulation.
    prefix : str
        Namespace name prefix (random by default, so testbeds never collide).
    """

    num_edges: int = 1
    num_devices: int = 2
    links: list[LinkProfile] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"ef{secrets.token_hex(3)}")
    hosts: list[Host] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.num_edges <= 50 or not 1 <= self.num_devices <= 100:
            raise ValueError("a testbed has 1-50 edge hosts and 1-100 device hosts")
        self.hosts = [Host("link", f"{self.prefix}-link", f"{SUBNET}.1", "p-link")]
        for i in range(self.num_edges):
            self.hosts.append(Host(f"edge-{i}", f"{self.prefix}-edge-{i}", f"{SUBNET}.{10 + i}", f"p-edge-{i}"))
        for i in range(self.num_devices):
            link = self.links[i % len(self.links)] if self.links else None
            self.hosts.append(Host(f"dev-{i}", f"{self.prefix}-dev-{i}", f"{SUBNET}.{100 + i}", f"p-dev-{i}", link))

    @property
    def hub(self) -> str:
        """The hub namespace (the bridge and every host's switch port)."""
        return f"{self.prefix}-hub"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this topology, hub last."""
        return [h.namespace for h in self.hosts] + [self.hub]

    def host(self, name: str) -> Host:
        """The host called ``name``."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in this testbed (hosts: {', '.join(h.name for h in self.hosts)})")

    def edges(self) -> list[Host]:
        """The edge-server hosts."""
        return [h for h in self.hosts if h.role == "edge"]

    def devices(self) -> list[Host]:
        """The device hosts."""
        return [h for h in self.hosts if h.role == "device"]

    def create(self) -> None:
        """Create the namespaces, the bridge, the veth pairs, the addresses and the shaping; undo it all on error."""
        try:
            ip("netns", "add", self.hub)
            ip("link", "set", "lo", "up", ns=self.hub)
            ip("link", "add", BRIDGE, "type", "bridge", ns=self.hub)
            ip("link", "set", BRIDGE, "up", ns=self.hub)
            for h in self.hosts:
                ip("netns", "add", h.namespace)
                ip("link", "set", "lo", "up", ns=h.namespace)
                ip("link", "add", HOST_IFACE, "netns", h.namespace, "type", "veth", "peer", "name", h.port,
                   "netns", self.hub)  # fmt: skip
                ip("link", "set", h.port, "master", BRIDGE, ns=self.hub)
                ip("link", "set", h.port, "up", ns=self.hub)
                ip("addr", "add", f"{h.address}/24", "dev", HOST_IFACE, ns=h.namespace)
                ip("link", "set", HOST_IFACE, "up", ns=h.namespace)
                if h.link is not None:
                    link, h.link = h.link, None
                    self.shape(h.name, link)
        except BaseException:
            self.destroy()
            raise

    def shape(self, name: str, link: LinkProfile) -> None:
        """Shape host ``name``'s uplink and downlink to ``link``'s bandwidth (latency is not applied).

        The uplink is the egress of the host's ``eth0``; the downlink the egress of its switch port towards it. A
        shaped direction is re-shaped in place with ``tc qdisc change`` (the queue is kept: a bandwidth change
        mid-transfer); a direction with 0 Mbit/s is left unshaped (its qdisc is removed).
        """
        h = self.host(name)
        before = h.link or LinkProfile()
        for mbps, was, dev, ns in (
            (link.uplink_mbps, before.uplink_mbps, HOST_IFACE, h.namespace),
            (link.downlink_mbps, before.downlink_mbps, h.port, self.hub),
        ):
            if mbps > 0 and was > 0:
                tc("qdisc", "change", "dev", dev, "root", "tbf", *tbf_args(mbps), ns=ns)
            elif mbps > 0:
                _shape_new(dev, ns, mbps)
            elif was > 0:
                tc("qdisc", "del", "dev", dev, "root", ns=ns, check=False)
        h.link = link

    def set_link(self, name: str, up: bool) -> None:
        """Plug (``up``) or unplug host ``name``'s cable at the switch (its port in the hub goes up or down)."""
        ip("link", "set", self.host(name).port, "up" if up else "down", ns=self.hub)

    def qdisc_rates(self, name: str) -> tuple[str, str]:
        """``tc qdisc show`` of a host's uplink and downlink (for checks and the status line)."""
        h = self.host(name)
        up = tc("qdisc", "show", "dev", HOST_IFACE, ns=h.namespace).stdout.strip()
        down = tc("qdisc", "show", "dev", h.port, ns=self.hub).stdout.strip()
        return up, down

    def destroy(self) -> list[str]:
        """Delete every namespace of this topology that exists (links and qdiscs go with them); return failures.

        Processes must be stopped first (a namespace with live processes disappears from ``/run/netns`` but lives
        on until they exit).
        """
        failed = []
        for ns in self.namespaces:
            if namespace_exists(ns):
                try:
                    ip("netns", "del", ns)
                except NetnsError as exc:
                    failed.append(f"{ns}: {exc}")
        return failed


def _shape_new(dev: str, ns: str, mbps: float) -> None:
    """Shape ``dev`` to ``mbps``: a ``tbf`` whose queue gives ACK-sized packets priority over bulk data."""
    args = tbf_args(mbps)
    limit = args[args.index("limit") + 1]
    tc("qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf", *args, ns=ns)
    tc("qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", "htb", "default", "20", ns=ns)
    for classid, prio in (("10:10", "0"), ("10:20", "1")):  # rates far above the tbf's: only the priority counts
        tc("class", "replace", "dev", dev, "parent", "10:", "classid", classid, "htb", "rate", "10gbit", "quantum",
           "1514", "prio", prio, ns=ns)  # fmt: skip
    tc("qdisc", "replace", "dev", dev, "parent", "10:20", "bfifo", "limit", limit, ns=ns)
    short = f"0x{(0xFFFF & ~(ACK_BYTES - 1)):04x}"  # IP total length < ACK_BYTES (a power of two)
    tc("filter", "replace", "dev", dev, "parent", "10:", "protocol", "ip", "prio", "1", "u32", "match", "u16",
       "0x0000", short, "at", "2", "flowid", "10:10", ns=ns)  # fmt: skip
