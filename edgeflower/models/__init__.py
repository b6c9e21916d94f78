"""Models: splittable models, the zoo, models by import reference, and the per-block profiler.

* :func:`build_model` — the one resolver: a zoo name or an import reference ``"package.module:callable"``;
* :func:`splittable` — any ``nn.Module`` as a :class:`SplittableModel` (``nn.Sequential`` as is, anything else
  traced with ``torch.fx`` and cut where exactly one tensor crosses);
* :func:`trust_reference` — let this process build a reference that a network peer names (edge servers);
* :func:`profile_model` — per-block compute and activation sizes for the planners;
* :mod:`edgeflower.models.checks` — prove on a model that split training equals local training.
"""

# ``splittable`` (the function) deliberately shadows the submodule of the same name as a package attribute;
# ``from edgeflower.models.splittable import ...`` still imports the submodule.
from edgeflower.models.fx import TraceError, splittable, trace_module
from edgeflower.models.profiler import BlockProfile, ModelProfile, count_flops, profile_model
from edgeflower.models.reference import ModelReferenceError, is_reference, trust_reference, trusted_references
from edgeflower.models.splittable import ModelSpec, Segment, SplittableModel, merge_state_dicts
from edgeflower.models.zoo import available_models, build_model, model_fingerprint

__all__ = [
    "BlockProfile",
    "ModelProfile",
    "ModelReferenceError",
    "ModelSpec",
    "Segment",
    "SplittableModel",
    "TraceError",
    "available_models",
    "build_model",
    "count_flops",
    "is_reference",
    "merge_state_dicts",
    "model_fingerprint",
    "profile_model",
    "splittable",
    "trace_module",
    "trust_reference",
    "trusted_references",
]
