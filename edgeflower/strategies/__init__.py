"""Flower strategies and strategy wrappers for edge training."""

from edgeflower.strategies.edge import EdgeStrategy, PlanFn, RoundRecorder

__all__ = ["EdgeStrategy", "PlanFn", "RoundRecorder"]
