"""Flower strategies and strategy wrappers for edge training (the planners they ask live in
:mod:`edgeflower.planning`)."""

from edgeflower.strategies.edge import EdgeStrategy, PlanFn, RoundPlanFn, RoundRecorder
from edgeflower.strategies.wrapper import StrategyWrapper

__all__ = ["EdgeStrategy", "PlanFn", "RoundPlanFn", "RoundRecorder", "StrategyWrapper"]
