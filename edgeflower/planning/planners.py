"""Planners: each round, one split point per node.

All planners share the :class:`~edgeflower.planning.base.Planner` protocol (``plan`` before a round, ``observe``
after it; PiPar's :class:`~edgeflower.planning.pipar.PiParPlanner` too):

* :class:`FixedPlanner`: the same split point for every node and round (``k = num_blocks`` is classic FL);
* :class:`ExactPlanner`: per node, the split point that minimises the cost model's predicted round time given
  the node's latest observations (the oracle the agent is compared with); it re-plans every round, so a
  bandwidth drop moves work back to the device as soon as it is observed;
* :class:`FedAdaptPlanner`: FedAdapt's agent: nodes grouped by k-means on observed speed and bandwidth, one
  split point per group from a trained PPO policy (its most likely cut).

Nodes without observations run classic FL first (FedAdapt's measurement round).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import INFO

from flwr.common.logger import log

from edgeflower.planning.actions import SplitMapper
from edgeflower.planning.base import Planner, SplitPlan
from edgeflower.planning.costmodel import CostModel
from edgeflower.planning.kmeans import group_nodes, node_features
from edgeflower.planning.observations import ObservationHistory
from edgeflower.planning.ppo import ActorCritic
from edgeflower.planning.state import agent_state

__all__ = ["ExactPlanner", "FedAdaptPlanner", "FixedPlanner", "ObservingPlanner", "Planner"]


class ObservingPlanner:
    """The shared part of the planners: the cost model, the per-node history (``window``: see
    :class:`~edgeflower.planning.observations.ObservationHistory`) and the plans made so far (round to node to plan).
    """

    def __init__(self, cost: CostModel, default_mbps: float = 50.0, window: int = 3) -> None:
        self.cost = cost
        self.history = ObservationHistory(cost, default_mbps, window=window)
        self.plans: dict[int, dict[int, SplitPlan]] = {}

    @property
    def num_blocks(self) -> int:
        """The no-offloading split point."""
        return self.cost.num_blocks

    def observe(self, server_round: int, replies: Mapping[int, Mapping[str, float]]) -> None:
        """Record the per-node reply metrics of ``server_round`` (replies without timings are skipped)."""
        for node, metrics in replies.items():
            if "train-time-s" in metrics:
                self.history.add(server_round, int(node), metrics)

    def predicted_round_s(self, node_id: int, k: int, batches: int | None = None) -> float | None:
        """Predicted seconds of ``node_id``'s next round at split ``k`` (``None`` without observations)."""
        state = self.history.state(node_id)
        last = self.history.latest(node_id)
        if state is None or last is None:
            return None
        return self.cost.round_s(k, state, batches or last.batches)

    def _remember(self, server_round: int, splits: Mapping[int, int | SplitPlan]) -> dict[int, SplitPlan]:
        plan = {n: p if isinstance(p, SplitPlan) else SplitPlan(p) for n, p in splits.items()}
        previous = {n: (p.split_point, p.micro_batches) for n, p in self.plans.get(server_round - 1, {}).items()}
        now = {n: (p.split_point, p.micro_batches) for n, p in plan.items()}
        changed = {n: km for n, km in now.items() if n in previous and previous[n] != km}
        if changed:
            log(INFO, "%s round %d: new (split point, micro-batches) %s", type(self).__name__, server_round, changed)
        self.plans.setdefault(server_round, {}).update(plan)
        return plan


class FixedPlanner(ObservingPlanner):
    """The same split point ``k`` for every node and round."""

    def __init__(self, cost: CostModel, k: int) -> None:
        super().__init__(cost)
        if not 0 <= k <= cost.num_blocks:
            raise ValueError(f"fixed split point {k} out of range 0..{cost.num_blocks}")
        self.k = k

    def plan(self, server_round: int, node_ids: Sequence[int]) -> dict[int, SplitPlan]:
        """``k`` for every node."""
        return self._remember(server_round, dict.fromkeys(node_ids, self.k))


class ExactPlanner(ObservingPlanner):
    """Per node, the split point with the smallest predicted round time (ties: less offloading)."""

    def best_split(self, node_id: int) -> int:
        """The best split point of one observed node (``num_blocks`` if it has no observations)."""
        state = self.history.state(node_id)
        if state is None:
            return self.num_blocks
        costs = [self.cost.iteration_s(k, state) for k in self.cost.split_points]
        best = min(costs)
        return max(k for k, c in enumerate(costs) if c <= best * (1 + 1e-9))

    def plan(self, server_round: int, node_ids: Sequence[int]) -> dict[int, SplitPlan]:
        """Each node's :meth:`best_split`."""
        return self._remember(server_round, {n: self.best_split(n) for n in node_ids})


class FedAdaptPlanner(ObservingPlanner):
    """FedAdapt's agent: k-means groups, one action per group from a trained policy.

    Parameters
    ----------
    cost : CostModel
        Cost model of the model being trained (for speed estimates and no-offloading times).
    policy : ActorCritic
        A trained actor (see :func:`~edgeflower.planning.policy.load_policy`); ``policy.num_groups`` groups,
        ``policy.num_choices`` must be ``num_blocks + 1``.
    default_mbps : float
        Prior bandwidth of nodes that have not measured one.
    """

    def __init__(self, cost: CostModel, policy: ActorCritic, default_mbps: float = 50.0) -> None:
        super().__init__(cost, default_mbps)
        if policy.num_choices != cost.num_blocks + 1:
            raise ValueError(f"the policy chooses among {policy.num_choices} cuts, the model has {cost.num_blocks + 1}")
        self.policy = policy
        self.num_groups = policy.num_groups
        self.mapper = SplitMapper(cost.profile)
        self.groups: dict[int, dict[int, int]] = {}
        self.actions: dict[int, list[int]] = {}

    def plan(self, server_round: int, node_ids: Sequence[int]) -> dict[int, SplitPlan]:
        """Classic FL for nodes without observations; the policy's split per group for the others.

        The groups and the actions are computed once per round, over *every* observed node (so the result does not
        depend on which nodes are asked about, or in what order, or one at a time); later calls of the same round
        reuse them. The action is each group's most likely cut (no sampling).
        """
        plan = dict.fromkeys(node_ids, self.num_blocks)
        known = self.history.nodes  # every observed node: groups do not depend on which nodes are asked about
        if server_round in self.groups:
            groups, values = self.groups[server_round], self.actions[server_round]
            for n in node_ids:
                if n in groups:
                    plan[n] = values[groups[n]]
        elif any(n in self.history for n in node_ids):
            states = {n: self.history.state(n) for n in known}
            groups = group_nodes({n: node_features(s) for n, s in states.items() if s is not None}, self.num_groups)
            times, splits, base, uplinks = {}, {}, {}, {}
            for n in known:
                last = self.history.latest(n)
                st = states[n]
                assert last is not None and st is not None
                times[n] = last.iteration_s
                splits[n] = last.split_point
                base[n] = self.cost.iteration_s(self.num_blocks, st)  # smoothed slow-down, as in training
                uplinks[n] = st.uplink_mbps
            state = agent_state(groups, times, splits, base, uplinks, self.mapper, self.num_groups)
            values = self.policy.choose(state)
            for n in node_ids:
                if n in groups:
                    plan[n] = values[groups[n]]
            self.groups[server_round] = groups
            self.actions[server_round] = values
        return self._remember(server_round, plan)
