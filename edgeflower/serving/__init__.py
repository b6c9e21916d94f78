"""Partitioned inference with failover (CONTINUER) and adaptive re-partitioning (Adaptive DNNs).

==========================  =============================================================================
module                      concept
==========================  =============================================================================
:mod:`.protocol`            the two gRPC services and their frames
:mod:`.rpc`                 gRPC plumbing (generic handlers over codec frames, errors as status codes)
:mod:`.node`                an inference node: one segment (+ exit head) of the model
:mod:`.nodeclient`          the controller's handle on a node (deploy, forward over an emulated link, ping)
:mod:`.plan`                routes through the chain; repartition / early-exit / skip routes
:mod:`.exits`               exit heads trained with the backbone frozen
:mod:`.failout`             failout training (skip-robust residual models)
:mod:`.bundle`              a model + partition + exit heads + estimates, saved without pickle
:mod:`.estimators`          accuracy, latency and downtime estimators
:mod:`.selection`           choose the technique against thresholds and priorities
:mod:`.journal`             append-only request journal (exactly-once across controller restarts)
:mod:`.settings`            the controller's timing and limits (:class:`ControllerConfig`)
:mod:`.deploy`              deploy segments to nodes; calibrate the downtime and latency estimators
:mod:`.routing`             the current route; run a request through it, again on the new one if it breaks
:mod:`.exactly_once`        every request id computed once and answered once (journalled)
:mod:`.failover`            dead nodes, failover options (estimated, selected) and the switch, re-admission
:mod:`.detection`           heartbeats; confirming a node a request found unavailable
:mod:`.service`             the controller's ``Predict`` and ``Status`` RPCs
:mod:`.controller`          the façade that wires the parts above: start, stop, status
:mod:`.client`              predict client with idempotent retries
:mod:`.adaptive`            device/edge cut planning, re-planning, sensitivity study
==========================  =============================================================================
"""

from edgeflower.serving.adaptive import (
    AdaptivePartitioner,
    AdaptiveSplitServing,
    Conditions,
    CutModel,
    measure_cut,
    plan_cut,
    sensitivity_study,
)
from edgeflower.serving.bundle import ServingBundle, build_bundle
from edgeflower.serving.client import Prediction, ServingClient
from edgeflower.serving.controller import Controller, ControllerConfig, FailoverEvent
from edgeflower.serving.estimators import DowntimeModel, LatencyModel, accuracy_table
from edgeflower.serving.exits import ExitHead, train_exit_heads
from edgeflower.serving.failout import failout_train
from edgeflower.serving.journal import Journal
from edgeflower.serving.node import InferenceNode
from edgeflower.serving.nodeclient import NodeClient
from edgeflower.serving.plan import Route, Stage
from edgeflower.serving.selection import Candidate, Objectives, Selection, select

__all__ = [
    "AdaptivePartitioner",
    "AdaptiveSplitServing",
    "Candidate",
    "Conditions",
    "Controller",
    "ControllerConfig",
    "CutModel",
    "DowntimeModel",
    "ExitHead",
    "FailoverEvent",
    "InferenceNode",
    "Journal",
    "LatencyModel",
    "NodeClient",
    "Objectives",
    "Prediction",
    "Route",
    "Selection",
    "ServingBundle",
    "ServingClient",
    "Stage",
    "accuracy_table",
    "build_bundle",
    "failout_train",
    "measure_cut",
    "plan_cut",
    "select",
    "sensitivity_study",
    "train_exit_heads",
]
