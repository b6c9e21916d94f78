"""Split training over the real gRPC channel equals local training of the whole model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from edgeflower.edge import EdgeServer
from edgeflower.transport import EdgeClient, InvalidMessageError
from tests._edge_helpers import (
    OPTIM,
    SECRET,
    fashion_batches,
    fresh_model,
    max_abs_diff,
    token,
    train_reference,
    train_split,
)

TOL = 1e-5
VGG5_BLOCKS = 7
RESNET18_BLOCKS = 10


@pytest.fixture(scope="module")
def client() -> Iterator[EdgeClient]:
    with EdgeServer("127.0.0.1", 0, secret=SECRET) as server, EdgeClient(server.address) as c:
        yield c


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return fashion_batches(num_batches=3, batch_size=16)


def _check(client: EdgeClient, name: str, k: int, batches: list, **opts: object) -> None:
    reference = train_reference(fresh_model(name, **opts), batches)
    model = fresh_model(name, **opts)
    assert k in model.split_points
    split, metrics = train_split(client, model, k, batches)
    assert max_abs_diff(split, reference) <= TOL
    assert metrics.batches == len(batches)
    assert metrics.samples == sum(len(y) for _, y in batches)


def test_block_counts_cover_every_split_point() -> None:
    assert fresh_model("vgg5").num_blocks == VGG5_BLOCKS
    assert fresh_model("resnet18", width=8).num_blocks == RESNET18_BLOCKS


@pytest.mark.parametrize("k", range(VGG5_BLOCKS))
def test_vgg5_split_training_matches_local_training(client: EdgeClient, batches: list, k: int) -> None:
    _check(client, "vgg5", k, batches)


@pytest.mark.parametrize("k", range(RESNET18_BLOCKS))
def test_resnet18_split_training_matches_local_training(client: EdgeClient, batches: list, k: int) -> None:
    _check(client, "resnet18", k, batches, width=8)


@pytest.mark.parametrize("name,options", [("vgg5", {}), ("resnet18", {"width": 8})])
def test_all_on_device_split_point_has_nothing_to_offload(client: EdgeClient, name: str, options: dict) -> None:
    model = fresh_model(name, **options)
    k = model.num_blocks
    _, tail = model.split(k)
    assert len(tail) == 0 and not tail.state_dict()
    with pytest.raises(InvalidMessageError, match="nothing to offload"):
        client.open_session(token(), model.spec, k, {}, OPTIM)


@pytest.mark.parametrize("micro,pipelined", [(2, False), (4, True)])
def test_micro_batches_accumulate_to_one_full_batch_step(
    client: EdgeClient, batches: list, micro: int, pipelined: bool
) -> None:
    # GroupNorm: per-sample normalisation, so micro-batching changes nothing but the order of summation.
    reference = train_reference(fresh_model("vgg5", norm="group"), batches)
    model = fresh_model("vgg5", norm="group")
    split, metrics = train_split(client, model, 3, batches, micro=micro, pipelined=pipelined)
    assert max_abs_diff(split, reference) <= TOL
    assert metrics.batches == len(batches)
    assert metrics.micro_batches == micro * len(batches)


def test_step_result_reports_loss_and_server_time(client: EdgeClient, batches: list) -> None:
    model = fresh_model("vgg5")
    head, tail = model.split(2)
    session = client.open_session(token(), model.spec, 2, tail.state_dict(), OPTIM)
    assert session.input_shape == tuple(head(batches[0][0]).shape[1:])
    x, y = batches[0]
    result = session.step(head(x).detach(), y, batch=0)
    with torch.no_grad():
        expected_loss = float(torch.nn.functional.cross_entropy(model(x), y))
    assert result.loss == pytest.approx(expected_loss, abs=1e-5)
    assert result.stepped and result.batch == 0 and result.micro == 0
    assert 0 < result.compute_s <= result.server_s
    _, metrics = session.close()
    assert metrics.mean_loss == pytest.approx(expected_loss, abs=1e-5)
    assert metrics.compute_s > 0 and metrics.duration_s > 0


def test_half_precision_activations_get_gradients_of_the_same_dtype(client: EdgeClient, batches: list) -> None:
    model = fresh_model("vgg5")
    head, tail = model.split(4)
    session = client.open_session(token(), model.spec, 4, tail.state_dict(), OPTIM)
    x, y = batches[0]
    act = head(x).detach().to(torch.bfloat16)
    result = session.step(act, y, batch=0)
    assert result.grad is not None and result.grad.dtype == torch.bfloat16 and result.grad.shape == act.shape
    session.close()
