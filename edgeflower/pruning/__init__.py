"""Pruned model portfolio (DNNShifter): sparse training, lossless structural surgery, fast switching.

* :mod:`~edgeflower.pruning.imp` — iterative magnitude pruning with weight rewinding;
* :mod:`~edgeflower.pruning.strategy` — the same pruning on the federated global model between rounds;
* :mod:`~edgeflower.pruning.surgery` — exact removal of dead channels (BN folding, constant folding, residuals);
* :mod:`~edgeflower.pruning.portfolio` — measured variants saved without pickle, with their architecture;
* :mod:`~edgeflower.pruning.switcher` — pick a variant for a budget and swap it in while serving.
"""

from edgeflower.pruning.arch import build_from_arch, describe_arch
from edgeflower.pruning.errors import BudgetError, PortfolioError, SurgeryError
from edgeflower.pruning.fusion import FoldedConv2d, fuse_batchnorm
from edgeflower.pruning.imp import (
    DEFAULT_COMPRESSIONS,
    IMPConfig,
    SparseLevel,
    geometric_compressions,
    iterative_magnitude_pruning,
    train_dense,
)
from edgeflower.pruning.magnitude import apply_masks, compression_of, global_magnitude_masks, prunable_tensors
from edgeflower.pruning.measure import count_params, cpu_latency_ms, state_bytes
from edgeflower.pruning.pipeline import PipelineResult, make_portfolio, select_levels
from edgeflower.pruning.plot import plot_pareto
from edgeflower.pruning.portfolio import Portfolio, Variant, build_portfolio, measure_variant
from edgeflower.pruning.strategy import PruningStrategy
from edgeflower.pruning.surgery import SurgeryResult, surgery
from edgeflower.pruning.switcher import Budget, Switcher, SwitchEvent, choose

__all__ = [
    "DEFAULT_COMPRESSIONS",
    "Budget",
    "BudgetError",
    "FoldedConv2d",
    "IMPConfig",
    "PipelineResult",
    "Portfolio",
    "PortfolioError",
    "PruningStrategy",
    "SparseLevel",
    "SurgeryError",
    "SurgeryResult",
    "SwitchEvent",
    "Switcher",
    "Variant",
    "apply_masks",
    "build_from_arch",
    "build_portfolio",
    "choose",
    "compression_of",
    "count_params",
    "cpu_latency_ms",
    "describe_arch",
    "fuse_batchnorm",
    "geometric_compressions",
    "global_magnitude_masks",
    "iterative_magnitude_pruning",
    "make_portfolio",
    "measure_variant",
    "plot_pareto",
    "prunable_tensors",
    "select_levels",
    "state_bytes",
    "surgery",
    "train_dense",
]
