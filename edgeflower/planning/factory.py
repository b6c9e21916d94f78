"""``make_planner``: the planner a run asks for (``planner = fixed | exact | fedadapt``, or PiPar's ``pipar``)."""

from __future__ import annotations

from edgeflower.models.profiler import ModelProfile
from edgeflower.models.splittable import SplittableModel
from edgeflower.planning.base import Planner
from edgeflower.planning.costmodel import CostModel
from edgeflower.planning.pipar import PiParPlanner
from edgeflower.planning.planners import ExactPlanner, FedAdaptPlanner, FixedPlanner
from edgeflower.planning.policy import load_policy

__all__ = ["PLANNERS", "PLANNER_KINDS", "make_planner"]

PLANNERS = ("fixed", "exact", "fedadapt")
"""The values of the run config's ``planner`` key (split points in ``split`` mode)."""

PLANNER_KINDS = (*PLANNERS, "pipar")
"""Every planner :func:`make_planner` builds (``pipar``: PiPar's split point and micro-batch count, ``pipeline``
mode)."""


def make_planner(
    kind: str,
    model: SplittableModel,
    profile: ModelProfile,
    *,
    policy_path: str = "",
    num_groups: int = 3,
    fixed_split: int | None = None,
    batch_size: int | None = None,
    default_mbps: float = 50.0,
    micro_batches: int = 0,
) -> Planner:
    """Build a planner.

    Parameters
    ----------
    kind : str
        ``"fixed"`` (``fixed_split`` for everyone; default no offloading), ``"exact"`` (cost-model optimum per
        node), ``"fedadapt"`` (k-means groups + the PPO policy in ``policy_path``) or ``"pipar"`` (PiPar's
        split point and micro-batch count per node; ``fixed_split`` and ``micro_batches`` fix either).
    model : SplittableModel
        The model being trained (its name and number of blocks are checked against the policy).
    profile : ModelProfile
        The model's measured per-block profile (``profile_model(model, batch_size, measure=True)``).
    policy_path : str
        Policy file of ``edgeflower train-agent`` (``fedadapt`` only).
    num_groups : int
        Groups the policy must have been trained for (``fedadapt`` only).
    fixed_split : int, optional
        Split point of ``fixed`` (default ``model.num_blocks``) and of ``pipar`` (default: selected).
    batch_size : int, optional
        Training batch size (default: the profile's).
    default_mbps : float
        Prior bandwidth of nodes that have not reported one (``fixed``, ``exact``, ``fedadapt``).
    micro_batches : int
        Micro-batch count of ``pipar`` (``0``: selected).

    Raises
    ------
    ValueError
        Unknown kind or bad split point; :class:`~edgeflower.planning.errors.PolicyError` (a ``ValueError``) for
        a missing, corrupted or mismatched policy.
    """
    if len(profile.blocks) != model.num_blocks:
        raise ValueError(f"profile has {len(profile.blocks)} blocks but {model.spec.name} has {model.num_blocks}")
    if kind == "pipar":
        k = -1 if fixed_split is None else fixed_split
        return PiParPlanner(profile, batch_size or profile.batch_size, k, micro_batches)
    cost = CostModel(profile, batch_size)
    if kind == "fixed":
        return FixedPlanner(cost, model.num_blocks if fixed_split is None else fixed_split)
    if kind == "exact":
        return ExactPlanner(cost, default_mbps)
    if kind == "fedadapt":
        if not policy_path:
            raise ValueError(
                "planner 'fedadapt' needs a policy file (policy-path); train one with `edgeflower train-agent`"
            )
        net, _ = load_policy(policy_path, model=model.spec.name, num_blocks=model.num_blocks, num_groups=num_groups)
        return FedAdaptPlanner(cost, net, default_mbps)
    raise ValueError(f"unknown planner {kind!r}: choose one of {', '.join(PLANNER_KINDS)}")
