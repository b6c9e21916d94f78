"""Differential privacy (DP-SGD with Opacus) for classic, split and pipelined training, with cumulative accounting.

One concept per module:

* :mod:`~edgeflower.privacy.settings` -- the DP run-config values, their validation and noise calibration;
* :mod:`~edgeflower.privacy.models` -- BatchNorm conversion (or refusal) and Opacus compatibility of a model;
* :mod:`~edgeflower.privacy.sampling` -- Poisson sampling of batches (what the RDP accountant assumes);
* :mod:`~edgeflower.privacy.dpsgd` -- per-sample gradients (Opacus hooks) and one clip + noise step per batch;
* :mod:`~edgeflower.privacy.accounting` -- the accountant history kept in Flower's ``context.state``;
* :mod:`~edgeflower.privacy.remote` -- opening an edge session whose tail is trained privately (``dp = full``);
* :mod:`~edgeflower.privacy.strategy` -- a strategy wrapper that skips nodes whose budget is exhausted, and central
  DP (Flower's own wrappers) for the ServerApp;
* :mod:`~edgeflower.privacy.summary` -- the run's privacy summary (epsilon spent per node and round).
"""

from edgeflower.privacy.accounting import PrivacyHistory
from edgeflower.privacy.dpsgd import BatchDPOptimizer, make_private
from edgeflower.privacy.models import prepare_model
from edgeflower.privacy.sampling import PoissonBatches
from edgeflower.privacy.settings import DP_MODES, DPSettings

__all__ = [
    "DP_MODES",
    "BatchDPOptimizer",
    "DPSettings",
    "PoissonBatches",
    "PrivacyHistory",
    "make_private",
    "prepare_model",
]
