"""Accounting that adds up: cumulative epsilon in the node's state, budgets, config errors, central DP composition."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from edgeflower.config import AppConfig, ConfigError
from edgeflower.device.split import SplitTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.privacy.accounting import STATE_KEY, PrivacyHistory
from edgeflower.privacy.mods import central_dp_mod
from edgeflower.privacy.node import NodeRoundDP
from edgeflower.privacy.settings import DPSettings
from edgeflower.privacy.strategy import SkipExhausted, central_dp
from edgeflower.strategies.edge import EdgeStrategy
from edgeflower.training import make_optimizer, train_local
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

SECRET = b"privacy-accounting-test-secret-0123456789"
DELTA = 1e-5


def _round(settings: DPSettings, state: RecordDict, n: int, split: bool = False, rounds: int = 3) -> NodeRoundDP:
    return NodeRoundDP(settings, state, n, 20, 1, 0, rounds, split, noise_seed=3)


def _independent_epsilon(steps: list[tuple[float, float, int]]) -> float:
    acc = RDPAccountant()
    for noise, rate, count in steps:
        for _ in range(count):
            acc.step(noise_multiplier=noise, sample_rate=rate)
    return acc.get_epsilon(DELTA)


def test_reported_epsilon_accumulates_across_rounds_and_equals_an_independent_opacus_accountant(fmnist_train, caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    x, y = fmnist_train.x[:100], fmnist_train.y[:100]
    settings = DPSettings("device", noise_multiplier=1.1, max_grad_norm=1.0, delta=DELTA)
    state = RecordDict()  # the node's context.state, carried across rounds
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group", width=0.25)
    reported = []
    for r in range(3):
        dp = _round(settings, state, len(y))
        opt, hooks, _ = dp.device().wrap(model, make_optimizer(model.parameters(), 0.05))
        train_local(model, dp.batches(x, y), opt)  # masks from the OS CSPRNG
        hooks.remove_hooks()
        metrics = dp.finish()
        reported.append(metrics["dp-epsilon"])
        # one count everywhere: the round's steps and all rounds' steps, in the metrics and in the log line
        assert (metrics["dp-round-steps"], metrics["dp-steps"]) == (5, 5 * (r + 1))
        assert f"round spent 5 steps ({5 * (r + 1)} in all rounds" in caplog.text
        assert dp.sampler is not None and dp.sampler.drawn == dp.steps == 5  # round(100 / 20) Poisson draws
        assert isinstance(state[STATE_KEY], ConfigRecord)  # stored as a ConfigRecord, not pickled
    independent = [_independent_epsilon([(1.1, 0.2, 5 * (r + 1))]) for r in range(3)]
    assert reported == pytest.approx(independent, abs=1e-6, rel=0)
    assert reported[0] < reported[1] < reported[2]
    assert PrivacyHistory.load(state).steps == 15


def test_full_mode_counts_one_joint_mechanism_per_step_for_head_and_tail(fmnist_train):
    x, y = fmnist_train.x[:60], fmnist_train.y[:60]
    settings = DPSettings("full", noise_multiplier=1.3, max_grad_norm=1.0, delta=DELTA)
    state = RecordDict()
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group", width=0.25)
    with EdgeServer(secret=SECRET) as edge, EdgeClient(edge.address) as client:
        token = TokenIssuer(SECRET).issue(run_id=1, node_id=1, server_round=1)
        dp = _round(settings, state, len(y), split=True)
        tail_dp = dp.tail_params()
        # each side: clip C / sqrt(2), noise std sigma * C (so the whole model's gradient is clipped to C)
        assert tail_dp is not None and tail_dp.max_grad_norm == pytest.approx(1.0 / 2**0.5)
        assert tail_dp.noise_multiplier * tail_dp.max_grad_norm == pytest.approx(1.3)
        device = dp.device()
        assert (device.noise_multiplier, device.max_grad_norm) == (tail_dp.noise_multiplier, tail_dp.max_grad_norm)
        result = SplitTrainer(model, 3, OptimizerSettings(0.05), dp=device).train(
            dp.batches(x, y, torch.Generator().manual_seed(0)),
            lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt, dp=tail_dp),
        )
        metrics = dp.finish(result.server_metrics)
    assert result.server_metrics["dp-steps"] == 3
    # head and tail on the same Poisson batch: ONE subsampled Gaussian of multiplier sigma per step
    assert metrics["dp-epsilon"] == pytest.approx(_independent_epsilon([(1.3, 1 / 3, 3)]), abs=1e-6)
    assert metrics["dp-edge-steps"] == 3 and metrics["dp-steps"] == 3
    assert dp.scope_record()["dp-scope"] == "model"


@pytest.mark.parametrize(("mode", "split"), [("device", False), ("full", True)])
def test_target_epsilon_calibrates_the_noise_and_stops_the_node_when_the_budget_is_spent(mode, split, caplog):
    settings = DPSettings(mode, noise_multiplier=0.0, max_grad_norm=1.0, target_epsilon=2.0, delta=DELTA)
    state = RecordDict()
    spent = []
    for _ in range(3):
        dp = _round(settings, state, 200, split=split, rounds=3)
        assert not dp.exhausted("node 0")
        dp.history.add(dp.noise_multiplier, dp.sample_rate, dp.steps)  # one mechanism per step in every mode
        dp.history.save(state)
        spent.append(dp.epsilon)
    assert spent[-1] <= 2.0 and spent[-1] > 1.9  # calibrated: the planned rounds use (almost) all of the budget
    last = _round(settings, state, 200, split=split, rounds=3)
    assert "budget exhausted" not in caplog.text
    assert last.exhausted("node 0")
    assert "dp: node 0 stops training: privacy budget exhausted" in caplog.text  # clearly logged
    assert last.stopped_metrics()["dp-stopped"] == 1 and last.stopped_metrics()["dp-epsilon"] == spent[-1]


@pytest.mark.parametrize(
    ("run_config", "key", "needle"),
    [
        ({"dp": "device", "dp-delta": 1e-5, "dp-noise-multiplier": -1.0}, "dp-noise-multiplier", ">= 0"),
        ({"dp": "device"}, "dp-delta", "required"),
        ({"dp": "full", "dp-delta": 1.5}, "dp-delta", "(0, 1)"),
        ({"dp": "device", "dp-delta": 1e-5, "dp-max-grad-norm": 0.0}, "dp-max-grad-norm", "> 0"),
        ({"dp": "device", "dp-delta": 1e-5, "dp-noise-multiplier": "auto"}, "dp-noise-multiplier", "target-epsilon"),
        ({"dp": "device", "dp-delta": 1e-5, "dp-target-epsilon": -2.0}, "dp-target-epsilon", ">= 0"),
        ({"dp": "sometimes"}, "dp", "unknown value"),
        ({"dp-batchnorm": "ignore"}, "dp-batchnorm", "unknown value"),
        ({"central-dp": "client-adaptive"}, "central-dp", "unknown value"),
        ({"central-dp-clipping-norm": -1.0}, "central-dp-clipping-norm", "> 0"),
        ({"dp": "device", "dp-delta": 1e-5, "dp-accountant": "gdp"}, "dp-accountant", "unknown value"),
        ({"central-dp-target-epsilon": 2.0}, "central-dp-target-epsilon", "central-dp is"),
        ({"central-dp-target-epsilon": -1.0}, "central-dp-target-epsilon", ">= 0"),
        (
            {"central-dp": "server-fixed", "central-dp-noise-multiplier": 0.0, "central-dp-target-epsilon": 2.0},
            "central-dp-noise-multiplier",
            "> 0",
        ),
    ],
)
def test_bad_dp_config_fails_fast_naming_the_key(run_config, key, needle):
    with pytest.raises(ConfigError) as info:
        AppConfig.from_run_config(run_config)
    assert info.value.key == key and f"'{key}'" in str(info.value) and needle in str(info.value)


def test_auto_noise_with_a_target_is_valid():
    cfg = AppConfig.from_run_config(
        {"dp": "full", "dp-delta": 1e-5, "dp-noise-multiplier": "auto", "dp-target-epsilon": 3.0}
    )
    assert cfg.dp_settings.noise_multiplier == 0.0 and cfg.dp_settings.target_epsilon == 3.0


def test_history_record_is_validated():
    bad = ConfigRecord({"noise-multiplier": [1.0], "sample-rate": [2.0], "steps": [3]})
    with pytest.raises(ValueError, match="invalid privacy history"):
        PrivacyHistory.from_record(bad)
    assert PrivacyHistory().epsilon(DELTA) == 0.0


# -- server side: Flower's central DP wrapper and nodes out of budget, composed with EdgeStrategy ------------------


class _Grid(Grid):
    """Just enough of a Grid for configure_train to sample two nodes."""

    def get_node_ids(self):
        return [11, 22]

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, *args):
        raise NotImplementedError

    def pull_messages(self, *args):
        raise NotImplementedError

    def send_and_receive(self, *args, **kwargs):
        raise NotImplementedError

    def set_run(self, run_id):
        pass

    @property
    def run(self):
        raise NotImplementedError


@pytest.fixture
def task_identity(monkeypatch):
    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _round_through(strategy: EdgeStrategy, updates: dict[int, tuple[torch.Tensor, int]], **metrics: float):
    arrays = ArrayRecord({"w": torch.zeros(6)})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({"lr": 0.1}), _Grid()))
    assert all(m.content["config"]["lr"] == 0.5 for m in messages)  # the plan reached every node
    replies = []
    for msg in messages:
        w, n = updates[msg.metadata.dst_node_id]
        content = RecordDict({"arrays": ArrayRecord({"w": w}), "metrics": MetricRecord({"num-examples": n, **metrics})})
        replies.append(Message(content, reply_to=msg))
    return strategy.aggregate_train(1, replies)


def _fedavg() -> FedAvg:
    return FedAvg(fraction_train=1.0, min_train_nodes=2, min_available_nodes=2)


def test_flowers_server_side_dp_wrapper_composes_with_edge_strategy(task_identity):
    torch.manual_seed(0)
    updates = {11: (torch.full((6,), 3.0), 10), 22: (torch.full((6,), -1.0), 30)}
    plain, _ = _round_through(EdgeStrategy(_fedavg(), plan_fn=lambda r, n: {"lr": 0.5}), updates)
    wrapped = central_dp(_fedavg(), "server-fixed", 1.0, 0.5, 2)
    assert isinstance(wrapped, DifferentialPrivacyServerSideFixedClipping)
    private, _ = _round_through(EdgeStrategy(SkipExhausted(wrapped), plan_fn=lambda r, n: {"lr": 0.5}), updates)
    w_plain = plain.to_torch_state_dict()["w"]
    w_private = private.to_torch_state_dict()["w"]
    assert torch.allclose(w_plain, torch.zeros(6))  # (3 * 10 - 1 * 30) / 40
    assert not torch.allclose(w_private, w_plain, atol=1e-3)  # clipped and noised


def _node_context(central: str) -> Context:
    return Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={"central-dp": central})


def test_client_side_central_dp_clips_each_nodes_update_through_the_mod(task_identity):
    wrapped = central_dp(_fedavg(), "client-fixed", 0.0, 0.5, 2)
    assert isinstance(wrapped, DifferentialPrivacyClientSideFixedClipping)
    strategy = EdgeStrategy(wrapped, plan_fn=lambda r, n: {"lr": 0.5})
    messages = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(6)}), ConfigRecord(), _Grid()))
    updates = {11: torch.full((6,), 3.0), 22: torch.full((6,), -1.0)}  # norms 7.3 and 2.4, clipped to 0.5
    replies, sent = [], {}
    for msg in messages:
        node = msg.metadata.dst_node_id

        def train(m: Message, ctx: Context, node: int = node) -> Message:
            content = RecordDict(
                {"arrays": ArrayRecord({"w": updates[node]}), "metrics": MetricRecord({"num-examples": 10})}
            )
            return Message(content, reply_to=m)

        reply = central_dp_mod(msg, _node_context("client-fixed"), train)
        sent[node] = reply.content["arrays"].to_torch_state_dict()["w"]
        replies.append(reply)
        untouched = central_dp_mod(msg, _node_context("off"), train)  # another run: a pass-through
        assert torch.equal(untouched.content["arrays"].to_torch_state_dict()["w"], updates[node])
    for node, w in sent.items():
        assert float(w.norm()) == pytest.approx(0.5, rel=1e-5)  # what left the node was clipped there
        assert torch.allclose(w / w.norm(), updates[node] / updates[node].norm())
    arrays, _ = strategy.aggregate_train(1, replies)
    assert torch.allclose(arrays.to_torch_state_dict()["w"], (sent[11] + sent[22]) / 2, atol=1e-6)  # noise 0


def test_nodes_out_of_budget_are_not_aggregated_and_an_empty_round_keeps_the_model(task_identity):
    from edgeflower.strategies.edge import RunFailedError

    strategy = EdgeStrategy(SkipExhausted(_fedavg()), plan_fn=lambda r, n: {"lr": 0.5})
    exhausted = {"dp-stopped": 1}  # what a node out of budget reports (NodeRoundDP.stopped_metrics)
    arrays, _ = _round_through(strategy, {11: (torch.full((6,), 3.0), 0), 22: (torch.full((6,), -1.0), 30)})
    assert torch.allclose(arrays.to_torch_state_dict()["w"], torch.full((6,), -1.0))
    arrays, metrics = _round_through(strategy, {11: (torch.ones(6), 0), 22: (torch.ones(6), 0)}, **exhausted)
    assert arrays is None and metrics is None  # Strategy.start keeps the previous global model
    fresh = EdgeStrategy(SkipExhausted(_fedavg()), plan_fn=lambda r, n: {"lr": 0.5})  # a budget too small for one
    with pytest.raises(RunFailedError, match="too small for even one round"):  # round: the run never trains
        _round_through(fresh, {11: (torch.ones(6), 0), 22: (torch.ones(6), 0)}, **exhausted)


def test_a_round_in_which_no_node_trained_for_another_reason_than_its_budget_fails_the_run(task_identity):
    from edgeflower.strategies.edge import RunFailedError

    strategy = EdgeStrategy(SkipExhausted(_fedavg()), plan_fn=lambda r, n: {"lr": 0.5})
    stopped = {"fell-back": 1, "dp-stopped": 0}  # DP nodes whose edge servers failed at their first batch
    with pytest.raises(RunFailedError, match="round 1: no node trained"):
        _round_through(strategy, {11: (torch.ones(6), 0), 22: (torch.ones(6), 0)}, **stopped)


def test_a_central_dp_budget_too_small_for_one_round_fails_the_run_instead_of_ending_it_cleanly():
    from types import SimpleNamespace

    from flwr.serverapp.exception import PrivacyBudgetExhausted

    from edgeflower.app.server_app import run_strategy
    from edgeflower.strategies.edge import RunFailedError

    class Refusing:
        def start(self, **kwargs):  # type: ignore[no-untyped-def]
            raise PrivacyBudgetExhausted("The next private release would exceed max_epsilon")

    cfg = SimpleNamespace(num_rounds=3, lr=0.1, round_timeout=3600.0)
    central = SimpleNamespace(stopped_at=1)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RunFailedError, match="too small for even one round"):
        run_strategy(Refusing(), None, model, cfg, None, central, None)  # type: ignore[arg-type]


def _central_round(strategy: EdgeStrategy, rnd: int, updates: dict[int, tuple[torch.Tensor, int]]):
    arrays = ArrayRecord({"w": torch.zeros(6)})
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.1}), _Grid()))
    replies = []
    for msg in messages:
        w, n = updates[msg.metadata.dst_node_id]
        content = RecordDict({"arrays": ArrayRecord({"w": w}), "metrics": MetricRecord({"num-examples": n})})
        replies.append(Message(content, reply_to=msg))
    return len(messages), strategy.aggregate_train(rnd, replies)


def test_central_dp_reports_flowers_client_level_epsilon_per_round_and_stops_cleanly_at_the_target(
    task_identity, tmp_path, caplog
):
    from flwr.serverapp.exception import PrivacyBudgetExhausted
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from edgeflower.privacy.strategy import CentralDPAccounting, central_accountant
    from edgeflower.privacy.summary import PrivacySummary

    updates = {11: (torch.full((6,), 3.0), 10), 22: (torch.full((6,), -1.0), 30)}  # unequal example counts
    # accounted central DP weighs nodes equally (Flower's accountant requires it): mean 1.0, not 0.0
    quiet = central_dp(_fedavg(), "server-fixed", 1e-4, 8.0, 2, central_accountant(DELTA, 2, 0.0))
    _, (arrays, _) = _central_round(EdgeStrategy(quiet, plan_fn=lambda r, n: {"lr": 0.5}), 1, updates)
    assert torch.allclose(arrays.to_torch_state_dict()["w"], torch.ones(6), atol=1e-2)

    sigma = 0.8
    orders = list(central_accountant(DELTA, 2, 0.0)._orders)

    def independent(releases: int) -> float:  # Gaussian mechanism without amplification, composed `releases` times
        rdp = compute_rdp(q=1.0, noise_multiplier=sigma, steps=releases, orders=orders)
        return float(get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)[0])

    target = (independent(2) + independent(3)) / 2  # two rounds fit, the third would not
    wrapped = central_dp(_fedavg(), "client-fixed", sigma, 8.0, 2, central_accountant(DELTA, 2, target))
    assert isinstance(wrapped, CentralDPAccounting)
    strategy = EdgeStrategy(wrapped, plan_fn=lambda r, n: {"lr": 0.5})
    for rnd in (1, 2):
        _, (arrays, metrics) = _central_round(strategy, rnd, updates)
        assert metrics["central-dp-epsilon"] == pytest.approx(independent(rnd), abs=1e-9)
    # round 3 would exceed the budget: Flower refuses before any node is sent the model; the ServerApp catches it
    # and ends the run with the global model it had (stopped_result)
    with pytest.raises(PrivacyBudgetExhausted):
        _central_round(strategy, 3, updates)
    assert wrapped.stopped_at == 3 and wrapped.stopped_result().arrays is wrapped.arrays
    assert wrapped.epsilon() <= target and "central DP: training stops before round 3" in caplog.text
    summary = PrivacySummary(DELTA, 0.0, "off", central=wrapped).finish(tmp_path)
    written = json.loads((tmp_path / "privacy.json").read_text())["central-dp"]
    assert written == summary["central-dp"]
    assert written["rounds"] == {"1": pytest.approx(independent(1)), "2": pytest.approx(independent(2))}
    assert written["stopped-at-round"] == 3 and written["sampling-method"] == "no-amplification"


def test_opacus_optimal_order_warning_is_silenced_at_its_source_and_epsilon_is_still_opacus_rdp():
    import warnings

    from edgeflower.privacy import accounting

    history = PrivacyHistory()
    history.add(5.0, 0.01, 3)  # few steps at high noise: the best RDP order is Opacus' largest default one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # everything shows ...
        accounting._silence_rdp_order_warning()  # ... but what the module installs at import (pytest resets it)
        epsilon = history.epsilon(DELTA)
        warnings.warn("an unrelated warning still shows", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["an unrelated warning still shows"]
    assert epsilon == pytest.approx(_independent_epsilon([(5.0, 0.01, 3)]), abs=1e-9)


def test_a_node_out_of_budget_replies_like_a_trained_node_with_its_split_point_in_its_node_record(task_identity):
    from edgeflower.app import client_app

    run_config = {"dp": "device", "dp-delta": DELTA, "dp-noise-multiplier": 1.0, "dp-target-epsilon": 0.01}
    cfg = AppConfig.from_run_config(run_config)
    node_config = {"partition-id": 0, "num-partitions": 4}
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)
    config = ConfigRecord({"server-round": 1})
    msg = Message(RecordDict({"arrays": ArrayRecord(cfg.build_model().state_dict()), "config": config}), 5, "train")
    reply = client_app.train(msg, context)  # one round would already exceed the target: the node does not train
    metrics, node = dict(reply.content["metrics"]), dict(reply.content["node"])
    assert metrics["num-examples"] == 0 and metrics["dp-stopped"] == 1
    assert "split-point" not in metrics and node["split-point"] == 7  # never averaged into the round's metrics
