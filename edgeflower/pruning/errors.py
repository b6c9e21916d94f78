"""Exceptions of the pruning package."""

from __future__ import annotations

__all__ = ["BudgetError", "PortfolioError", "SurgeryError"]


class SurgeryError(ValueError):
    """A model cannot be turned into a smaller dense model (unsupported layer or normalisation)."""


class PortfolioError(RuntimeError):
    """A portfolio directory is missing, corrupt or tampered with; the message names the file."""


class BudgetError(ValueError):
    """No variant of a portfolio meets the requested budget."""
