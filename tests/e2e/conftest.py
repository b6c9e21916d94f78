"""End-to-end tests through Flower's engines (``flwr run`` in simulation, SuperLink + SuperNodes): all marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``slow`` (deselect them with ``-m "not slow"`` for a quick unit run)."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)
