"""Splittable model zoo and per-block profiler."""

from edgeflower.models.profiler import BlockProfile, ModelProfile, count_flops, profile_model
from edgeflower.models.splittable import ModelSpec, Segment, SplittableModel, merge_state_dicts
from edgeflower.models.zoo import available_models, build_model

__all__ = [
    "BlockProfile",
    "ModelProfile",
    "ModelSpec",
    "Segment",
    "SplittableModel",
    "available_models",
    "build_model",
    "count_flops",
    "merge_state_dicts",
    "profile_model",
]
