"""The test suite's own machinery: ``make test``'s ``--dist loadgroup`` really keeps a group on one worker."""

from __future__ import annotations

import pytest


def test_each_test_carries_its_xdist_group_so_a_group_runs_on_one_worker(request: pytest.FixtureRequest) -> None:
    """pytest-xdist puts a test's group into its node id (``path::name@group``), and its scheduler sends all tests
    of one group to one worker from that suffix alone. pytest 9.2 stores node ids where xdist 3.8 cannot add it:
    every group was then spread over the workers without a word (module fixtures built on each worker, the shared
    classic-FL run of the end-to-end tests run twice). Under plain ``pytest`` there is no group to check."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not running under pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@tests/test_suite_grouping.py"), request.node.nodeid
