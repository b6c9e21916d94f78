"""Adaptive offloading (FedAdapt): cost model, observations, exact planner, k-means groups, PPO agent.

Typical use in a ServerApp::

    from edgeflower.planning import make_planner, planner_strategy

    profile = profile_model(model, batch_size=cfg.batch_size)
    planner = make_planner("exact", model, profile)            # or "fedadapt" with policy_path=...
    strategy = planner_strategy(FedAvg(...), planner, base_plan_fn=plan, recorder=runlog)

Offline agent training: ``edgeflower train-agent`` (see :mod:`edgeflower.commands.train_agent`).
"""

from edgeflower.planning.actions import SplitMapper, offload_reward
from edgeflower.planning.costmodel import CostModel, IterationCost, NodeState, median_profile
from edgeflower.planning.env import EnvConfig, OffloadEnv
from edgeflower.planning.errors import PolicyError
from edgeflower.planning.factory import PLANNERS, make_planner
from edgeflower.planning.flower import PlannedRounds, PlanningRecorder, planner_strategy
from edgeflower.planning.kmeans import group_nodes, kmeans, node_features
from edgeflower.planning.observations import Observation, ObservationHistory
from edgeflower.planning.planners import ExactPlanner, FedAdaptPlanner, FixedPlanner, Planner
from edgeflower.planning.policy import PolicyHeader, load_policy, save_policy
from edgeflower.planning.ppo import ActorCritic, PPOAgent, PPOConfig
from edgeflower.planning.scenario import Testbed, TestbedNode, fedadapt_testbed, parse_link_schedules
from edgeflower.planning.training import evaluate_policy, plot_rewards, train_agent

__all__ = [
    "PLANNERS",
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
    "PlannedRounds",
    "Planner",
    "PlanningRecorder",
    "PolicyError",
    "PolicyHeader",
    "SplitMapper",
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
    "planner_strategy",
    "plot_rewards",
    "save_policy",
    "train_agent",
]
