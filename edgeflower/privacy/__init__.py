"""Differential privacy (DP-SGD with Opacus) for classic, split and pipelined training, with cumulative accounting.

One concept per module:

* :mod:`~edgeflower.privacy.settings` -- the DP run-config values, their validation and noise calibration;
* :mod:`~edgeflower.privacy.models` -- BatchNorm conversion (or refusal) and Opacus compatibility of a model;
* :mod:`~edgeflower.privacy.sampling` -- Poisson sampling of batches from the OS's CSPRNG (what amplification by
  subsampling assumes);
* :mod:`~edgeflower.privacy.dpsgd` -- per-sample gradients (Opacus hooks) and one clip + noise step per batch;
* :mod:`~edgeflower.privacy.accounting` -- the accountant history kept in Flower's ``context.state`` (one
  subsampled Gaussian per step in every mode; Opacus' RDP or PRV accountant);
* :mod:`~edgeflower.privacy.remote` -- opening an edge session whose tail is trained privately (``dp = full``);
* :mod:`~edgeflower.privacy.strategy` -- a strategy wrapper that skips nodes whose budget is exhausted, and central
  DP (Flower's own wrappers with Flower's own ``RdpAccountant``, a clean stop at the budget) for the ServerApp;
* :mod:`~edgeflower.privacy.summary` -- the run's privacy summary (epsilon spent per node and round).
"""

import logging as _logging

_root_handlers = list(_logging.getLogger().handlers)
import opacus  # noqa: E402, F401  - first import of Opacus, here, so its side effect below can be undone

# Opacus' utils call ``logging.basicConfig`` at import, which gives the root logger a stderr handler: every line of
# Flower's logger (which propagates) then appeared twice. Logging belongs to the application, so we take it out.
for _handler in _logging.getLogger().handlers:
    if _handler not in _root_handlers:
        _logging.getLogger().removeHandler(_handler)

from edgeflower.privacy.accounting import PrivacyHistory  # noqa: E402
from edgeflower.privacy.dpsgd import BatchDPOptimizer, DeviceDP, make_private  # noqa: E402
from edgeflower.privacy.models import prepare_model  # noqa: E402
from edgeflower.privacy.node import NodeRoundDP  # noqa: E402
from edgeflower.privacy.sampling import PoissonBatches  # noqa: E402
from edgeflower.privacy.settings import DP_MODES, DPSettings  # noqa: E402

__all__ = [
    "DP_MODES",
    "BatchDPOptimizer",
    "DPSettings",
    "DeviceDP",
    "NodeRoundDP",
    "PoissonBatches",
    "PrivacyHistory",
    "make_private",
    "prepare_model",
]
