"""pytest fixtures for testbed tests: ``testbed_factory`` starts testbeds that are always torn down.

Use them from a test module (``from edgeflower.testbed.fixture import testbed_factory``) or a ``conftest.py``.
Without root the tests that use them are skipped with the reason (the testbed itself never falls back to loopback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edgeflower.testbed.netns import PrivilegeError, require_privileges
from edgeflower.testbed.testbed import Testbed

__all__ = ["testbed_factory"]


@pytest.fixture
def testbed_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Testbed]]:
    """``make(**kwargs) -> Testbed``: a started :class:`Testbed` (kwargs as its constructor's, ``workdir`` optional);
    every testbed made is stopped (processes killed, namespaces deleted) when the test ends, pass or fail."""
    try:
        require_privileges()
    except PrivilegeError as exc:
        pytest.skip(f"testbed: {exc}")
    made: list[Testbed] = []

    def make(**kwargs: Any) -> Testbed:
        kwargs.setdefault("workdir", tmp_path_factory.mktemp("testbed"))
        tb = Testbed(**kwargs)
        made.append(tb)
        return tb.start()

    try:
        yield make
    finally:
        for tb in made:
            tb.stop()
