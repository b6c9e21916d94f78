"""Opacus, imported on first use, with its logging side effect undone.

Importing Opacus costs seconds (it pulls in ``torch.distributed.tensor`` and ``scipy.stats``), so only code that
runs DP imports it: every process of a run without DP (the ServerApp, each ClientApp, edge servers, the CLI) starts
without it. Call :func:`load_opacus` before the first ``from opacus ... import`` of a module or function.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType

__all__ = ["load_opacus"]


def load_opacus() -> ModuleType:
    """Import Opacus once and return it.

    Opacus' utils call ``logging.basicConfig`` at import, which gives the root logger a stderr handler: every line of
    Flower's logger (which propagates) then appeared twice. Logging belongs to the application, so the handlers that
    import added are taken out again.
    """
    if "opacus" in sys.modules:
        return sys.modules["opacus"]
    root = logging.getLogger()
    before = list(root.handlers)
    import opacus

    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
    return opacus
