"""Flower strategies and strategy wrappers for edge training."""

from edgeflower.strategies.edge import EdgeStrategy, PlanFn, RoundRecorder
from edgeflower.strategies.pipar import PiParPlanner, Plan, predict_iteration, select_plan
from edgeflower.strategies.wrapper import StrategyWrapper

__all__ = [
    "EdgeStrategy",
    "PiParPlanner",
    "Plan",
    "PlanFn",
    "RoundRecorder",
    "StrategyWrapper",
    "predict_iteration",
    "select_plan",
]
