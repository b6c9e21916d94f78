"""The DP mechanism as it runs: one subsampled Gaussian per step in every mode, secret Poisson masks, budgets that
hold, and what the epsilon covers, each checked against Opacus' accountants used directly."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from flwr.app import RecordDict
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from torch import nn

from edgeflower.app.task import node_loader
from edgeflower.config import AppConfig
from edgeflower.data.datasets import ImageData
from edgeflower.models import build_model
from edgeflower.privacy.dpsgd import BatchDPOptimizer, make_private
from edgeflower.privacy.node import NodeRoundDP, scope_warning
from edgeflower.privacy.sampling import PoissonBatches, csprng_mask
from edgeflower.privacy.settings import DPSettings
from edgeflower.training import make_optimizer

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Optimal order")

DELTA = 1e-5
ORDERS = RDPAccountant.DEFAULT_ALPHAS


def _rdp_epsilon(noise: float, rate: float, steps: int) -> float:
    """Epsilon of ``steps`` subsampled Gaussian mechanisms, straight from Opacus' RDP analysis."""
    rdp = compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=ORDERS)
    return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=DELTA)[0])


def _play_round(dp: NodeRoundDP, n: int, session_steps: bool = True) -> dict[str, float]:
    """Draw the round's Poisson masks (no training) and finish it like the ClientApp does."""
    sampler = dp.batches(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long))
    for _ in sampler:
        pass
    session = {"dp-steps": float(sampler.drawn)} if session_steps and dp.tail_private else None
    return dp.finish(session)


def test_full_mode_epsilon_equals_an_independent_rdp_computation_of_one_mechanism_at_rounds_1_3_10():
    n, batch, sigma = 6000, 100, 1.0  # q = 1/60, 60 steps per round
    states = {mode: RecordDict() for mode in ("full", "device")}
    reported: dict[str, dict[int, float]] = {mode: {} for mode in states}
    for rnd in range(1, 11):
        for mode, state in states.items():
            settings = DPSettings(mode, sigma, 1.0, 0.0, DELTA, compare=False)
            dp = NodeRoundDP(settings, state, n, batch, 1, 0, 10, split=True)
            reported[mode][rnd] = _play_round(dp, n)["dp-epsilon"]
    for rnd in (1, 3, 10):
        independent = _rdp_epsilon(sigma, 1 / 60, 60 * rnd)
        assert reported["full"][rnd] == pytest.approx(independent, abs=1e-9, rel=0)
    # the audit's figures for this mechanism (sigma 1, q 1/60): one mechanism, not two
    assert [round(reported["full"][r], 4) for r in (1, 3, 10)] == [1.4852, 1.8597, 2.8244]
    # dp = full covers the whole model at the epsilon that dp = device gives the head alone
    assert reported["full"] == reported["device"]


def test_prv_accountant_reports_opacus_prv_and_keeps_rdp_for_comparison(caplog):
    state = RecordDict()
    settings = DPSettings("full", 1.0, 1.0, 0.0, DELTA, accountant="prv")
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            metrics = _play_round(NodeRoundDP(settings, state, 6000, 100, 1, 0, 2, split=True), 6000)
    prv = PRVAccountant()
    prv.history = [(1.0, 1 / 60, 120)]
    assert metrics["dp-epsilon"] == metrics["dp-epsilon-prv"] == pytest.approx(prv.get_epsilon(DELTA), abs=1e-9)
    assert metrics["dp-epsilon-rdp"] == pytest.approx(_rdp_epsilon(1.0, 1 / 60, 120), abs=1e-9)
    assert metrics["dp-epsilon-prv"] < metrics["dp-epsilon-rdp"]  # PRV is the tighter one
    assert "(prv; rdp:" in caplog.text  # the other accountant is logged next to the chosen one


@pytest.mark.parametrize(("mode", "noise"), [("full", 0.0), ("device", 0.0), ("full", 0.8)])
def test_budget_stop_never_exceeds_the_target_under_single_mechanism_accounting(mode, noise):
    n, batch, rounds, target = 1200, 20, 3, 3.0  # q = 1/60, 60 steps per round
    settings = DPSettings(mode, noise, 1.0, target, DELTA, compare=False)
    state = RecordDict()
    spent, trained = [], 0
    for _ in range(rounds + 2):  # more rounds than planned: the stop must hold them back
        dp = NodeRoundDP(settings, state, n, batch, 1, 0, rounds, split=True)
        if dp.exhausted("node 0"):
            spent.append(dp.stopped_metrics()["dp-epsilon"])
            continue
        spent.append(_play_round(dp, n)["dp-epsilon"])
        trained += 1
    assert max(spent) <= target + 1e-9
    # what was really spent, recomputed independently for the single mechanism, is within the budget too
    assert _rdp_epsilon(dp.noise_multiplier, 1 / 60, trained * 60) <= target + 1e-9
    if noise == 0.0:  # "auto": calibrated with the same accounting, so the planned rounds fit and use the budget
        assert trained == rounds and max(spent) > 0.9 * target
    else:
        assert 0 < trained < rounds + 2  # a fixed noise multiplier that cannot last: the node stopped


def test_poisson_masks_come_from_the_os_csprng_and_differ_across_same_seed_dp_runs():
    cfg = AppConfig.from_run_config({"dp": "device", "dp-delta": 1e-5, "seed": 7, "norm": "group"})
    x, y = torch.arange(500.0).unsqueeze(1), torch.zeros(500, dtype=torch.long)

    def run_masks() -> list[torch.Tensor]:  # a fresh node of a fresh run with the same config and seed
        dp = NodeRoundDP(cfg.dp_settings, RecordDict(), 500, 50, 1, 0, 1, split=False)
        return [batch_x.flatten() for batch_x, _ in dp.batches(x, y)]

    first, second = run_masks(), run_masks()
    assert len(first) == len(second) == 10
    assert any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # 500 independent coins each
    # they are real Poisson masks at rate q
    rate = float(torch.cat([csprng_mask(50_000, 0.1) for _ in range(4)]).float().mean())
    assert rate == pytest.approx(0.1, abs=0.005)
    assert csprng_mask(100, 1.0).all() and not csprng_mask(100, 1e-12).any()
    # a seed cannot be smuggled in: reproducible masks need an explicit generator (tests, benchmarks)
    with pytest.raises(TypeError, match="not a seed"):
        PoissonBatches(x, y, 0.1, 3, 7)  # type: ignore[arg-type]
    seeded = [PoissonBatches(x, y, 0.1, 3, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*seeded, strict=True))


def test_non_dp_batches_stay_reproducible_from_the_seed():
    cfg = AppConfig.from_run_config({"seed": 7, "batch-size": 32})
    data = ImageData(torch.arange(300.0).unsqueeze(1), torch.zeros(300, dtype=torch.long), 10, "toy")
    runs = [[bx.flatten() for bx, _ in node_loader(cfg, data, 2, 1).batches(0)] for _ in range(2)]
    assert len(runs[0]) > 1 and all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    other = AppConfig.from_run_config({"seed": 8, "batch-size": 32})
    assert not torch.equal(runs[0][0], next(iter(node_loader(other, data, 2, 1).batches(0)))[0].flatten())


def test_clipping_folds_the_batch_size_in_without_copying_the_per_sample_gradients():
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group", width=0.25)
    x, y = torch.randn(12, 1, 28, 28) * 20, torch.randint(0, 10, (12,))
    hooks = make_private(model)
    opt = BatchDPOptimizer(make_optimizer(model.parameters(), 0.1), 0.0, 0.5, len(y))
    nn.functional.cross_entropy(model(x), y).backward()
    before = {id(p): (p.grad_sample, p.grad_sample.clone()) for p in model.parameters()}
    scaled = [p.grad_sample * len(y) for p in model.parameters()]  # what each sample's own loss gradient is
    opt.pre_step()
    for p in model.parameters():
        held, copy = before[id(p)]
        assert p.grad_sample is held and torch.equal(held, copy)  # neither replaced nor scaled in place
    norms = torch.stack([g.reshape(len(y), -1).norm(dim=1) for g in scaled], dim=1).norm(dim=1)
    factor = (0.5 / (norms + 1e-6)).clamp(max=1.0)
    for p, gs in zip(model.parameters(), scaled, strict=True):
        expected = torch.einsum("i,i...", factor, gs) / len(y)
        assert torch.allclose(p.grad, expected, rtol=1e-4, atol=1e-7)
    hooks.remove_hooks()


def test_device_dp_in_split_mode_says_its_epsilon_covers_the_head_only():
    device = DPSettings("device", 1.0, 1.0, 0.0, DELTA)
    full = DPSettings("full", 1.0, 1.0, 0.0, DELTA)
    assert device.scope(split=True) == "head" and device.scope(split=False) == "model"
    assert full.scope(split=True) == "model"
    warning = scope_warning("device", split=True)
    assert warning is not None and "head only" in warning and "WITHOUT DP" in warning and 'dp = "full"' in warning
    assert scope_warning("device", split=False) is None and scope_warning("full", split=True) is None
    dp = NodeRoundDP(device, RecordDict(), 100, 10, 1, 0, 1, split=True)
    assert dp.scope_record()["dp-scope"] == "head" and dp.tail_params() is None
    # the head alone: full bound and full multiplier (nothing is shared with an unprotected tail)
    assert (dp.device().noise_multiplier, dp.device().max_grad_norm) == (1.0, 1.0)
    assert math.isclose(NodeRoundDP(full, RecordDict(), 100, 10, 1, 0, 1, split=True).device().max_grad_norm, 0.5**0.5)
    # the reply's dp record reaches the run's privacy summary as a string, next to the numeric metrics
    from edgeflower.privacy.summary import PrivacySummary

    summary = PrivacySummary(DELTA, 0.0, "device")
    summary.on_train_round(1, 0.1, {7: {"dp-epsilon": 0.5, "dp-steps": 10, **dp.scope_record()}}, {})
    assert summary.finish()["nodes"]["7"]["scope"] == "head" and summary.finish()["scope"] == ["head"]
