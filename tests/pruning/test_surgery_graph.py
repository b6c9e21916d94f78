"""Surgery from the traced graph: torchvision models with SiLU/Hardswish/SE/residuals/concatenation are exact, and
everything whose data flow surgery cannot prove is refused with a clear error."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from edgeflower.models import splittable
from edgeflower.pruning import SurgeryError, count_params, surgery
from tests.models import _user_model as user
from tests.pruning.test_surgery import _randomise_bn, _sparsify


class _Fire(nn.Module):
    """SqueezeNet's fire module: concatenation along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(1, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return self.fc(self.out(torch.cat([self.e1(s), self.e3(s)], 1)))


def _exact(module: nn.Module, shape: tuple[int, ...], seed: int = 1) -> tuple[float, object]:
    gen = torch.Generator().manual_seed(seed)
    _randomise_bn(module, gen)
    _sparsify(module, gen)
    module.eval()
    result = surgery(module, shape)
    x = torch.randn(4, *shape, generator=gen)
    with torch.no_grad():
        return float((module(x) - result.model(x)).abs().max()), result


@pytest.mark.parametrize(
    "build",
    [
        lambda: tvm.mobilenet_v3_small(weights=None, num_classes=10),
        lambda: tvm.efficientnet_b0(weights=None, num_classes=10),
    ],
    ids=["mobilenet_v3_small", "efficientnet_b0"],
)
def test_surgery_is_exact_on_torchvision_models_with_silu_hardswish_and_squeeze_excitation(build):
    torch.manual_seed(0)
    module = build()
    diff, result = _exact(module, (3, 32, 32))
    assert diff <= 1e-4
    assert result.removed > 0 and count_params(result.model) < count_params(module)


def test_surgery_is_exact_through_concatenation_and_gelu():
    torch.manual_seed(0)
    diff, result = _exact(_Fire(), (1, 8, 8))
    assert diff <= 1e-4 and result.removed > 0


def test_sequential_subclass_with_its_own_forward_is_exact_not_silently_wrong():
    torch.manual_seed(0)
    diff, _ = _exact(user.ResNetLike(), (1, 8, 8))
    assert diff <= 1e-4


def test_surgery_works_on_a_splittable_model_of_a_users_module():
    torch.manual_seed(0)
    model = splittable(user.Net(), torch.zeros(2, 1, 28, 28))
    diff, result = _exact(model, (1, 28, 28))
    assert diff <= 1e-4 and result.removed > 0


class _Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.transpose(1, 2).flatten(1)


class _GroupConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.stem = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(self.stem(x))).mean((2, 3))


class _ParamInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) * self.scale).mean((2, 3))


class _Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.conv(x), dim=1).values.mean((2, 3))


@pytest.mark.parametrize(
    ("module", "shape", "message"),
    [
        (user.DataDependent(), (4,), r"cannot prove the data flow.*DataDependent.*control flow"),
        (_Shuffle(), (1, 8, 8), r"unsupported operation .*transpose"),
        (_GroupConv(), (1, 8, 8), r"conv\.1: grouped convolutions"),
        (_Shared(), (1, 8, 8), r"conv: the convolution is used more than once"),
        (_ParamInForward(), (1, 8, 8), r"reads the parameter or buffer 'scale'"),
        (_Unknown(), (1, 8, 8), r"of the result of .*sort produces a tensor whose channels are not known"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten()), (1, 8, 8), r"1: GroupNorm couples"),
        (nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3), nn.Flatten()), (1, 8, 8), r"0: BatchNorm2d does not"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softmax(1), nn.Flatten()), (1, 8, 8), r"unsupported module Softmax"),
        (
            tvm.VisionTransformer(8, 4, 1, 1, 8, 8, num_classes=3),
            (3, 8, 8),
            r"reshape: only flattening all dimensions after the batch",
        ),
    ],
    ids=[
        "data-dependent",
        "transpose",
        "grouped",
        "shared",
        "param",
        "sort",
        "groupnorm",
        "bn-first",
        "softmax",
        "vit",
    ],
)
def test_surgery_refuses_what_it_cannot_prove_naming_the_construct(module, shape, message):
    with pytest.raises(SurgeryError, match=message):
        surgery(module, shape)
