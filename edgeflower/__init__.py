"""edgeflower: edge-computing techniques for the Flower federated-learning framework.

What a Flower app composes, importable from the top level (loaded on first use, so ``import edgeflower`` stays
cheap):

========================  ==========================================================================
name                      what it is
========================  ==========================================================================
``EdgeStrategy``          wraps any Flower strategy (``FedAvg``, ``FedProx`` ...): per-node split plans
``PruningStrategy``       IMP pruning of the global model between rounds
``SplitTrainer``          device side of split training against an edge server
``PipelineTrainer``       the same, pipelined over micro-batches (PiPar)
``ProximalSGD``           FedProx's proximal term as an optimizer (each side adds its own part)
``EdgeServer``            the edge server (in-process); ``edgeflower edge-server`` runs one as a process
``EdgePool``              the ServerApp's set of edge servers
``NodePlan``              one node's plan for a round: the typed contract between ServerApp and ClientApp
``EdgeClient``            the device's connection to an edge server
``TokenIssuer``           issues the per-node session tokens the edge servers check
``OptimizerSettings``     SGD settings of both sides
``NodeRoundDP``           DP-SGD for the device part in a user's own ClientApp, with accounting
``DeviceDP``              DP-SGD on the device-side model part
``build_model``           a model by zoo name or import reference ``"package.module:callable"``
``splittable``            any ``nn.Module`` as a ``SplittableModel`` (``torch.fx``)
``trust_reference``       let this process build a reference a peer names
``surgery``               exact structural removal of pruned channels
``make_portfolio``        IMP levels + surgery + measurements: a pruned model portfolio
``Switcher``              picks and swaps portfolio variants at run time
``Controller``            partitioned inference with failover
========================  ==========================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "EdgeStrategy": "edgeflower.strategies",
    "StrategyWrapper": "edgeflower.strategies",
    "PruningStrategy": "edgeflower.pruning",
    "SplitTrainer": "edgeflower.device",
    "PipelineTrainer": "edgeflower.device",
    "ProximalSGD": "edgeflower.training",
    "EdgeServer": "edgeflower.edge",
    "EdgeServerConfig": "edgeflower.edge",
    "EdgePool": "edgeflower.edge",
    "NodePlan": "edgeflower.app.plan",
    "EdgeClient": "edgeflower.transport",
    "TokenIssuer": "edgeflower.transport",
    "OptimizerSettings": "edgeflower.transport",
    "NodeRoundDP": "edgeflower.privacy",
    "DeviceDP": "edgeflower.privacy",
    "DPSettings": "edgeflower.privacy",
    "ModelSpec": "edgeflower.models",
    "SplittableModel": "edgeflower.models",
    "build_model": "edgeflower.models",
    "splittable": "edgeflower.models",
    "trust_reference": "edgeflower.models",
    "surgery": "edgeflower.pruning",
    "make_portfolio": "edgeflower.pruning",
    "Portfolio": "edgeflower.pruning",
    "Switcher": "edgeflower.pruning",
    "Controller": "edgeflower.serving",
    "InferenceNode": "edgeflower.serving",
    "load_dataset": "edgeflower.data",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import an exported name's subpackage on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeflower' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
