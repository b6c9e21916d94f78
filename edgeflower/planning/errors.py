"""Errors of the planning package."""

from __future__ import annotations

__all__ = ["PolicyError"]


class PolicyError(ValueError):
    """A policy file is missing, corrupted, or does not match the model / grouping it is loaded for."""
