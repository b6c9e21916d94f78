"""A real-network testbed: Flower's SuperLink, SuperNodes and edgeflower edge servers on separate network
namespaces joined by kernel-shaped links (``tc tbf``), with link faults injected while a run goes.

Needs root (network namespaces, veth, ``tc``); without it :class:`PrivilegeError` says so and nothing starts.
"""

from edgeflower.testbed.faults import Fault
from edgeflower.testbed.netns import NetnsError, PrivilegeError, require_privileges
from edgeflower.testbed.testbed import Testbed
from edgeflower.testbed.topology import Topology

__all__ = ["Fault", "NetnsError", "PrivilegeError", "Testbed", "Topology", "require_privileges"]
