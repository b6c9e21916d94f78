"""Any nn.Module becomes splittable: torchvision models and a user's own, exact split/merge and split training."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from edgeflower.models import splittable
from edgeflower.models.checks import split_merge_gap, split_training_gap
from edgeflower.models.fx import TraceError
from tests.models import _user_model as user


def _vit() -> nn.Module:
    return tvm.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


MODELS = {
    "resnet34": lambda: tvm.resnet34(weights=None, num_classes=10),
    "mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(weights=None, num_classes=10),
    "efficientnet_b0": lambda: tvm.efficientnet_b0(weights=None, num_classes=10),
    "vit": _vit,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_model_splits_merges_and_trains_split_exactly(name):
    torch.manual_seed(0)
    module = MODELS[name]()
    whole = copy.deepcopy(module)
    x = torch.randn(2, 3, 32, 32)
    model = splittable(module, x)
    assert model.num_blocks > 4
    assert all(isinstance(b, torch.fx.GraphModule) for b in model.blocks)
    k = model.num_blocks // 2
    assert split_merge_gap(model, x, k) <= 1e-5
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    assert split_training_gap(whole, model, batches, k) <= 1e-5


def test_users_model_splits_everywhere_and_trains_split_exactly():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    net = user.Net()
    model = splittable(copy.deepcopy(net), x)
    assert model.spec.name == "tests.models._user_model:Net" and model.spec.num_classes == 10
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(2)]
    for k in range(1, model.num_blocks):
        assert split_merge_gap(model, x, k) <= 1e-6
        assert split_training_gap(copy.deepcopy(net), copy.deepcopy(model), batches, k) <= 1e-6, k


def test_sequential_splits_between_children_and_shares_parameters():
    seq = user.wide_net((1, 8, 8), 3)
    model = splittable(seq, torch.zeros(1, 1, 8, 8))
    assert model.num_blocks == len(seq)
    assert next(model.parameters()) is next(seq.parameters())


def test_sequential_subclass_with_its_own_forward_is_traced_not_taken_as_a_chain():
    torch.manual_seed(0)
    module = user.ResNetLike().eval()
    x = torch.randn(2, 1, 8, 8)
    model = splittable(module, x).eval()
    with torch.no_grad():
        assert torch.equal(model(x), module(x))
    # the residual's input crosses the block, so no cut falls inside it
    assert not any(name.startswith("block.") and name != "block.2" for name in model.block_names[:-1])


def test_untraceable_forward_is_refused_naming_the_construct():
    with pytest.raises(TraceError, match=r"DataDependent.*control flow"):
        splittable(user.DataDependent(), torch.randn(2, 4))


def test_model_returning_a_tuple_is_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(TraceError, match="returns tuple"):
        splittable(Pair(), torch.randn(2, 4))


def test_no_cut_lets_a_tail_start_by_writing_into_its_input_in_place():
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.act = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.act(self.conv(x)), 1))

    torch.manual_seed(0)
    module = InPlace()
    model = splittable(copy.deepcopy(module), torch.zeros(2, 1, 8, 8))
    assert "conv" not in model.block_names  # the cut after conv would hand the tail a leaf to modify in place
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    for k in range(1, model.num_blocks):
        assert split_training_gap(copy.deepcopy(module), copy.deepcopy(model), batches, k) <= 1e-6
