"""Structural surgery is exact: the smaller dense model computes what the sparse model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeflower.models.zoo import build_model
from edgeflower.pruning import FoldedConv2d, SurgeryError, count_params, fuse_batchnorm, surgery

SMALL = {
    "vgg5": {"width": 0.5},
    "vgg8": {"width": 0.125},
    "vgg11": {"width": 0.125},
    "vgg16": {"width": 0.125},
    "resnet18": {"width": 8},
    "mobilenetv2": {"width": 0.25},
}


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 1.5 - 0.5)  # many dead filters get relu(b) > 0


def _sparsify(model: nn.Module, gen: torch.Generator, dead: float = 0.4, zero: float = 0.5) -> None:
    """Zero random weights and whole random filters of every convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.data
            w.mul_((torch.rand(w.shape, generator=gen) > zero).float())
            w[torch.rand(w.shape[0], generator=gen) < dead] = 0


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    a.eval()
    b.eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_surgery_output_equals_sparse_model_for_every_zoo_model(name: str, norm: str) -> None:
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10, norm, **SMALL[name])
    _randomise_bn(model, gen)
    _sparsify(model, gen)
    result = surgery(model)
    x = torch.randn(6, 1, 28, 28, generator=gen)
    assert _max_diff(model, result.model, x) <= 1e-4
    assert result.removed > 0
    assert count_params(result.model) < count_params(model)
    assert isinstance(result.model, type(model))  # still a SplittableModel with .blocks


def test_dead_filter_with_nonzero_constant_is_folded_exactly_including_padded_borders() -> None:
    torch.manual_seed(0)
    model = build_model("vgg5", (1, 28, 28), 10, "batch", width=0.25)
    _randomise_bn(model, torch.Generator().manual_seed(3))
    conv1, bn1 = model.blocks[0][0], model.blocks[0][1]
    with torch.no_grad():
        conv1.weight[:3] = 0  # three dead filters of the first layer ...
        bn1.bias[:3] = torch.tensor([0.7, 1.3, -0.4])  # ... two of which output a non-zero constant
        bn1.running_mean[:3] = conv1.bias[:3]  # constant = relu(beta)
    result = surgery(model)
    assert result.channels_after["blocks.0.0"] == conv1.out_channels - 3
    assert result.folded_constants >= 2
    nxt = result.model.blocks[2][0]  # conv2 reads the removed channels through zero padding
    assert isinstance(nxt, FoldedConv2d) and nxt.const_kernel.abs().sum() > 0
    x = torch.randn(4, 1, 28, 28)
    assert _max_diff(model, result.model, x) <= 1e-4
    # folding the constant into a plain bias would be wrong at the borders: the kernel map is not constant
    cmap = nxt.constant_map(14, 14, x)
    assert float((cmap[..., 0, 0] - cmap[..., 7, 7]).abs().max()) > 1e-3


def test_dead_first_linear_inputs_fold_into_the_linear_bias() -> None:
    torch.manual_seed(0)
    model = build_model("vgg5", (1, 28, 28), 10, "none", width=0.25)
    last_conv = model.blocks[4][0]
    with torch.no_grad():
        last_conv.weight[:5] = 0
        last_conv.bias[:5] = torch.linspace(0.2, 1.0, 5)
    result = surgery(model)
    fc = result.model.blocks[5][1]
    assert fc.in_features == (last_conv.out_channels - 5) * 49
    assert _max_diff(model, result.model, torch.randn(3, 1, 28, 28)) <= 1e-4


def test_residual_stream_channel_is_removed_only_when_dead_in_every_branch() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", (1, 28, 28), 10, "batch", width=8)
    _randomise_bn(model, torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.blocks[0][0].weight[2] = 0  # stem filter 2
        model.blocks[1].conv2.weight[2] = 0  # layer1.0 branch, channel 2
        model.blocks[2].conv2.weight[2] = 0  # layer1.1 branch, channel 2 -> stream channel 2 is constant
        model.blocks[3].conv2.weight[5] = 0  # layer2.0: dead in one branch only, downsample keeps it live
    result = surgery(model)
    after = result.channels_after
    assert after["blocks.0.0"] == after["blocks.1.conv2"] == after["blocks.2.conv2"] == 7
    assert after["blocks.3.conv2"] == after["blocks.3.downsample.0"] == 16
    assert _max_diff(model, result.model, torch.randn(4, 1, 28, 28)) <= 1e-4


def test_surgered_model_can_still_be_split_into_head_and_tail() -> None:
    gen = torch.Generator().manual_seed(2)
    model = build_model("mobilenetv2", (1, 28, 28), 10, "batch", width=0.25)
    _randomise_bn(model, gen)
    _sparsify(model, gen)
    pruned = surgery(model).model
    head, tail = pruned.split(5)
    x = torch.randn(2, 1, 28, 28, generator=gen)
    with torch.no_grad():
        assert torch.allclose(tail(head(x)), pruned(x), atol=1e-6)


def test_batchnorm_folding_alone_is_exact() -> None:
    gen = torch.Generator().manual_seed(4)
    model = build_model("resnet18", (1, 28, 28), 10, "batch", width=8)
    _randomise_bn(model, gen)
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert _max_diff(model, fused, torch.randn(3, 1, 28, 28, generator=gen)) <= 1e-4


def test_groupnorm_model_raises_a_clear_surgery_error() -> None:
    model = build_model("vgg5", (1, 28, 28), 10, "group", width=0.25)
    with pytest.raises(SurgeryError, match="GroupNorm"):
        surgery(model)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_portfolio_of_every_zoo_model_saves_and_loads_the_surgered_architecture(name: str, tmp_path) -> None:
    from edgeflower.pruning import Portfolio
    from edgeflower.pruning.imp import SparseLevel
    from edgeflower.pruning.portfolio import build_portfolio

    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    levels = []
    for target, dead in ((2, 0.2), (8, 0.5)):
        model = build_model(name, (1, 28, 28), 10, "batch", **SMALL[name])
        _randomise_bn(model, gen)
        _sparsify(model, gen, dead=dead)
        levels.append(SparseLevel(target, float(target), model.state_dict(), {}))
    built = build_portfolio(levels, model.spec, batch_sizes=(1,), repeats=1, progress=False)
    built.save(tmp_path / name)
    loaded = Portfolio.load(tmp_path / name)
    x = torch.randn(4, 1, 28, 28, generator=gen)
    for old, new in zip(built.variants, loaded.variants, strict=True):
        assert {k: t.shape for k, t in new.model.state_dict().items()} == {
            k: t.shape for k, t in old.model.state_dict().items()
        }  # no size mismatch: the architecture description rebuilds the smaller layers
        assert _max_diff(old.model, new.model, x) == 0.0
        assert old.extra["max_abs_diff"] <= 1e-4
