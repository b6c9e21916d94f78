"""DP-SGD on the device and on the edge server: clipping per sample, noise applied, full mode, no Opacus prefixes."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from edgeflower.config import AppConfig, ConfigError
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.split import SplitTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.privacy.dpsgd import BatchDPOptimizer, DeviceDP, make_private
from edgeflower.privacy.models import prepare_model
from edgeflower.training import make_optimizer, train_local
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.codec import decode_frame
from edgeflower.transport.errors import InvalidMessageError
from edgeflower.transport.messages import DPParams, OpenRequest

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

SECRET = b"privacy-dpsgd-test-secret-0123456789abc"
OPT = OptimizerSettings(lr=0.05)
B = 24


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg5", norm="group", width=0.25)


@pytest.fixture(scope="module")
def edge():
    with EdgeServer(secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def batches(fmnist_train):
    x, y = fmnist_train.x[:72], fmnist_train.y[:72]
    return [(x[i : i + B], y[i : i + B]) for i in range(0, 72, B)]


def _opener(client: EdgeClient, model, dp: DPParams | None, node: int = 1):
    token = TokenIssuer(SECRET).issue(run_id=5, node_id=node, server_round=1)
    return lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt, dp=dp)  # dp None: no DP


def _dp(noise: float, clip: float, seed: int = 0) -> DeviceDP:
    return DeviceDP(noise, clip, B, 0.1, torch.Generator().manual_seed(seed))


def _tail_dp(noise: float, clip: float, seed: int = 1) -> DPParams:
    return DPParams(noise, clip, B, 0.1, 1e-5, seed)


def _diff(a: nn.Module, b: nn.Module, prefix: str = "") -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa if k.startswith(prefix))


def _per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's loss gradient, flattened over all parameters, by one plain backward pass per sample."""
    out = []
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return out


def test_per_sample_gradients_are_clipped_to_the_bound_over_the_whole_batch(batches):
    x, y = batches[0]
    x = x * 20  # large gradients: clipping is active for every sample
    clip = 0.5
    reference = _model()
    prepare_model(reference)  # in-place activations off, as in the private model
    grads = _per_sample_grads(reference, x, y)
    norms = torch.stack([g.norm() for g in grads])
    assert (norms > clip).all()
    expected = sum(g * min(1.0, clip / (float(g.norm()) + 1e-6)) for g in grads)

    model = _model()
    hooks = make_private(model)
    opt = BatchDPOptimizer(make_optimizer(model.parameters(), 0.1), 0.0, clip, len(y))
    opt.zero_grad(set_to_none=True)
    for xs, ys in zip(x.tensor_split(3), y.tensor_split(3), strict=True):  # 3 micro-batches of one batch
        (nn.functional.cross_entropy(model(xs), ys) * (len(ys) / len(y))).backward()
    opt.pre_step()
    summed = torch.cat([p.summed_grad.flatten() for p in model.parameters()])
    hooks.remove_hooks()
    assert torch.allclose(summed, expected, rtol=1e-4, atol=1e-5)
    # each sample contributes at most the bound: with sigma = 0 and one-sample batches, the step is the clipped grad
    single = _model()
    hooks = make_private(single)
    opt = BatchDPOptimizer(make_optimizer(single.parameters(), 0.1), 0.0, clip, 1)
    for i in range(len(y)):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(single(x[i : i + 1]), y[i : i + 1]).backward()
        opt.pre_step()
        norm = torch.cat([p.grad.flatten() for p in single.parameters()]).norm()
        assert norm <= clip * (1 + 1e-5)
    hooks.remove_hooks()


def test_fl_dp_update_differs_from_non_dp_and_state_dict_has_no_opacus_prefix(batches):
    plain, private, noiseless = _model(), _model(), _model()
    train_local(plain, batches, make_optimizer(plain.parameters(), 0.05))
    for model, noise, seed in ((private, 1.0, 0), (noiseless, 0.0, 0)):
        opt, hooks, accountant = _dp(noise, 1e3, seed).wrap(model, make_optimizer(model.parameters(), 0.05))
        train_local(model, batches, opt)
        hooks.remove_hooks()
        assert len(accountant.history) == 1 and accountant.history[0][2] == len(batches)
    assert list(private.state_dict()) == list(plain.state_dict())
    assert not any("_module" in k for k in private.state_dict())
    # with sigma = 0 and a huge bound DP-SGD is plain SGD (the per-sample machinery is exact) ...
    assert _diff(noiseless, plain) < 1e-4
    # ... and with noise the update really differs
    assert _diff(private, plain) > 1e-2


def test_pipelined_dp_equals_sequential_dp_one_clip_per_sample_per_batch(edge, batches):
    """sigma = 0, tight bound: clipping is per sample over the whole batch however it is cut into micro-batches."""
    sequential, pipelined = _model(), _model()
    with EdgeClient(edge.address) as client:
        SplitTrainer(sequential, 3, OPT, dp=_dp(0.0, 0.1)).train(batches, _opener(client, sequential, _tail_dp(0, 0.1)))
        trainer = PipelineTrainer(pipelined, 3, OPT, 3, dp=_dp(0.0, 0.1))
        result = trainer.train(batches, _opener(client, pipelined, _tail_dp(0, 0.1)))
    assert not result.fell_back
    assert _diff(sequential, pipelined) < 1e-5
    assert _diff(sequential, _model()) > 1e-4


def test_split_device_dp_applies_noise_to_the_head_only_and_full_mode_to_the_tail(edge, batches):
    one = batches[:1]  # after one batch the tail's update does not depend on the head's
    plain, device, full = _model(), _model(), _model()
    with EdgeClient(edge.address) as client:
        SplitTrainer(plain, 3, OPT).train(one, _opener(client, plain, None))
        SplitTrainer(device, 3, OPT, dp=_dp(1.0, 1.0)).train(one, _opener(client, device, None))
        result = SplitTrainer(full, 3, OPT, dp=_dp(1.0, 1.0)).train(one, _opener(client, full, _tail_dp(1.0, 1.0)))
    head = ("blocks.0.", "blocks.1.", "blocks.2.")
    assert all(_diff(device, plain, h) > 1e-3 for h in head[:1])
    assert _diff(device, plain, "blocks.5.") < 1e-6  # dp = device: the edge server's update is not private
    assert _diff(full, plain, "blocks.5.") > 1e-3  # dp = full: it is
    assert result.server_metrics["dp-steps"] == 1 and result.server_metrics["dp-epsilon"] > 0
    assert result.server_metrics["dp-noise-multiplier"] == 1.0


def test_full_mode_bounds_the_edge_servers_update_by_the_clipping_norm(edge, batches):
    """sigma = 0, SGD without momentum: each tail step moves the tail by at most lr * C (mean of clipped grads)."""
    clip = 1e-3
    before, model = _model(), _model()
    with EdgeClient(edge.address) as client:
        SplitTrainer(model, 3, OPT).train(batches[:1], _opener(client, model, _tail_dp(0.0, clip)))
    sa, sb = model.state_dict(), before.state_dict()
    tail_keys = [k for k in sa if int(k.split(".")[1]) >= 3]
    step = torch.cat([(sa[k] - sb[k]).flatten() for k in tail_keys]).norm()
    assert 0 < step <= OPT.lr * clip * (1 + 1e-4)


def test_dp_params_travel_in_the_open_request_and_bad_values_are_rejected():
    model = _model()
    req = OpenRequest("t", model.spec, 3, OPT, model.split(3)[1].state_dict(), dp=_tail_dp(1.5, 2.0, 7))
    back = OpenRequest.from_frame(decode_frame(req.to_bytes()))
    assert back.dp == req.dp
    with pytest.raises(InvalidMessageError, match="noise_multiplier"):
        DPParams(-1.0, 1.0, 10, 0.1, 1e-5)
    with pytest.raises(InvalidMessageError, match="sample_rate"):
        DPParams(1.0, 1.0, 10, 0.0, 1e-5)


def test_batchnorm_is_converted_for_every_party_or_refused_and_said_once_by_the_server_app(edge, caplog):
    from edgeflower.privacy.models import converts_batchnorm, log_conversion

    caplog.set_level(logging.INFO, logger="flwr")
    cfg = AppConfig.from_run_config({"dp": "device", "dp-delta": 1e-5, "norm": "batch", "mode": "split"})
    model = cfg.build_model()
    cfg.build_model()  # every process that builds the model (CLI, ServerApp, each ClientApp actor) says nothing
    assert "converted to GroupNorm" not in caplog.text
    assert converts_batchnorm(cfg.dp, cfg.norm) and not converts_batchnorm("off", "batch")
    log_conversion(cfg.model)  # what the ServerApp does, once per run
    assert "uses BatchNorm" in caplog.text and caplog.text.count("converted to GroupNorm") == 1  # said clearly, once
    assert model.spec.norm == "group"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    prepare_model(model)  # Opacus-valid
    with pytest.raises(ConfigError) as info:
        AppConfig.from_run_config({"dp": "device", "dp-delta": 1e-5, "norm": "batch", "dp-batchnorm": "refuse"})
    assert info.value.key == "norm" and "GroupNorm" not in str(info.value) and "group" in str(info.value)
    assert AppConfig.from_run_config({"norm": "batch"}).build_model().spec.norm == "batch"  # no DP: untouched
    bn = build_model("vgg5", norm="batch", width=0.25)
    with pytest.raises(ValueError, match="not compatible with DP-SGD"):
        prepare_model(copy.deepcopy(bn))
    with EdgeClient(edge.address) as client, pytest.raises(InvalidMessageError, match="DP-SGD"):
        _opener(client, bn, _tail_dp(1.0, 1.0))(3, bn.split(3)[1].state_dict(), OPT)
