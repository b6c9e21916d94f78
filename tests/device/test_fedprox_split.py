"""FedProx in split mode: the device adds the head's proximal part, the edge server the tail's; the result equals
FedProx on the whole model. The same run shows an edge server building a user's model from its reference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from edgeflower.device import SplitTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model, trust_reference
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer

SECRET = b"fedprox-split-test-secret-0123456789abcdef"
MU = 0.5


def _fedprox_whole(model, batches, opt: OptimizerSettings) -> dict:
    """FedProx as its paper writes it: loss + mu/2 * ||w - w_global||^2 on the whole model, plain SGD."""
    anchor = [p.detach().clone() for p in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    model.train()
    for x, y in batches:
        sgd.zero_grad()
        prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
        (F.cross_entropy(model(x), y) + MU / 2 * prox).backward()
        sgd.step()
    return model.state_dict()


@pytest.mark.parametrize(
    ("name", "k"), [("vgg5", 3), ("tests.models._user_model:Net", 4)], ids=["zoo", "users-model-by-reference"]
)
def test_split_fedprox_equals_fedprox_on_the_whole_model(name, k):
    torch.manual_seed(0)
    if ":" in name:
        trust_reference(name)  # what `edgeflower edge-server --model ...` does at start-up
    initial = build_model(name, (1, 28, 28), 10)
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(3)]
    opt = OptimizerSettings(lr=0.05, momentum=0.9, weight_decay=1e-4, proximal_mu=MU)
    expected = _fedprox_whole(copy.deepcopy(initial), batches, opt)
    model = copy.deepcopy(initial)
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=1, server_round=1)
    with EdgeServer(secret=SECRET) as server, EdgeClient(server.address) as client:
        opener = lambda kk, tail, o: client.open_session(token, model.spec, kk, tail, o)  # noqa: E731
        result = SplitTrainer(model, k, opt).train(batches, opener)
    assert not result.fell_back
    got = model.state_dict()
    assert max((got[key] - expected[key]).abs().max().item() for key in expected) <= 1e-5
    # and the proximal term did change the result
    no_prox = copy.deepcopy(initial)
    sgd = torch.optim.SGD(no_prox.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    for x, y in batches:
        sgd.zero_grad()
        F.cross_entropy(no_prox(x), y).backward()
        sgd.step()
    assert max((got[key] - no_prox.state_dict()[key]).abs().max().item() for key in expected) > 1e-4
