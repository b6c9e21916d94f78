"""Planning split training: every planner behind one :class:`Planner` protocol (fixed, exact, FedAdapt's k-means +
PPO agent, PiPar's split point and micro-batch selection), the cost model and the observations they learn from.

Typical use in a ServerApp (one question per round, for all of the round's nodes)::

    from edgeflower.planning import PlanningRecorder, make_planner

    profile = profile_model(model, batch_size=cfg.batch_size)
    planner = make_planner("exact", model, profile)            # or "fedadapt" with policy_path=..., or "pipar"

    def plan_round(server_round, node_ids):                    # EdgeStrategy(..., round_plan_fn=plan_round)
        plans = planner.plan(server_round, node_ids)           # {node: SplitPlan(split_point, micro_batches, ...)}
        return {n: {"split-point": p.split_point} for n, p in plans.items()}

    strategy = EdgeStrategy(FedAvg(...), round_plan_fn=plan_round, recorder=PlanningRecorder(planner, runlog))

Offline agent training: ``edgeflower train-agent`` (see :mod:`edgeflower.commands.train_agent`).
"""

from edgeflower.planning.actions import SplitMapper, offload_reward
from edgeflower.planning.base import Planner, SplitPlan, split_points
from edgeflower.planning.costmodel import CostModel, IterationCost, NodeState, median_profile
from edgeflower.planning.env import EnvConfig, OffloadEnv
from edgeflower.planning.errors import PolicyError
from edgeflower.planning.factory import PLANNER_KINDS, PLANNERS, make_planner
from edgeflower.planning.kmeans import group_nodes, kmeans, node_features
from edgeflower.planning.observations import Observation, ObservationHistory
from edgeflower.planning.pipar import PiParPlanner, predict_iteration, select_plan
from edgeflower.planning.planners import ExactPlanner, FedAdaptPlanner, FixedPlanner
from edgeflower.planning.policy import PolicyHeader, load_policy, save_policy
from edgeflower.planning.ppo import ActorCritic, PPOAgent, PPOConfig
from edgeflower.planning.recorder import PlanningRecorder
from edgeflower.planning.scenario import Testbed, TestbedNode, fedadapt_testbed, parse_link_schedules
from edgeflower.planning.training import evaluate_policy, plot_rewards, train_agent

__all__ = [
    "PLANNERS",
    "PLANNER_KINDS",
    "ActorCritic",
    "CostModel",
    "EnvConfig",
    "ExactPlanner",
    "FedAdaptPlanner",
    "FixedPlanner",
    "IterationCost",
    "NodeState",
    "Observation",
    "ObservationHistory",
    "OffloadEnv",
    "PPOAgent",
    "PPOConfig",
    "PiParPlanner",
    "Planner",
    "PlanningRecorder",
    "PolicyError",
    "PolicyHeader",
    "SplitMapper",
    "SplitPlan",
    "Testbed",
    "TestbedNode",
    "evaluate_policy",
    "fedadapt_testbed",
    "group_nodes",
    "kmeans",
    "load_policy",
    "make_planner",
    "median_profile",
    "node_features",
    "offload_reward",
    "parse_link_schedules",
    "plot_rewards",
    "predict_iteration",
    "save_policy",
    "select_plan",
    "split_points",
    "train_agent",
]
