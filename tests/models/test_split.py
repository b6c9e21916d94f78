"""Splittable zoo models: split/merge round trips and head/tail equivalence for every split point."""

from __future__ import annotations

import pytest
import torch

from edgeflower.models import ModelSpec, available_models, build_model, merge_state_dicts

SHAPES = [(1, 28, 28), (3, 32, 32)]
SMALL = {"vgg8": 0.25, "vgg11": 0.25, "vgg16": 0.25, "mobilenetv2": 0.5, "resnet18": 8}


def _model(name: str, shape: tuple[int, int, int], norm: str = "batch"):
    torch.manual_seed(0)
    opts = {"width": SMALL[name]} if name in SMALL else {}
    return build_model(name, shape, 10, norm, **opts)


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", available_models())
def test_split_state_dicts_merge_back_exactly_at_every_split_point(name, shape):
    model = _model(name, shape)
    full = model.state_dict()
    for k in model.split_points:
        head, tail = model.split(k)
        merged = merge_state_dicts(head, tail)
        assert list(merged) == list(full) or set(merged) == set(full)
        assert set(head.state_dict()).isdisjoint(tail.state_dict())
        for key, value in full.items():
            assert torch.equal(merged[key], value), (k, key)
        clone = _model(name, shape)
        clone.merge(head, tail)  # strict load: raises on any missing or unexpected key
        for key, value in clone.state_dict().items():
            assert torch.equal(value, full[key])


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", available_models())
def test_tail_of_head_equals_full_model_at_every_split_point(name, shape, norm):
    model = _model(name, shape, norm).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected = model(x)
        assert expected.shape == (3, 10)
        for k in model.split_points:
            head, tail = model.split(k)
            assert torch.allclose(tail(head(x)), expected, atol=1e-5), k


def test_split_copies_are_independent_unless_shared():
    model = _model("vgg5", (1, 28, 28))
    head, _ = model.split(2)
    with torch.no_grad():
        next(head.parameters()).add_(1.0)
    assert not torch.equal(next(head.parameters()), next(model.parameters()))
    shared_head, _ = model.split(2, share=True)
    assert next(shared_head.parameters()) is next(model.parameters())


def test_vgg5_has_fedadapt_layout():
    model = build_model("vgg5", (3, 32, 32))
    assert model.block_names == ["conv1", "pool1", "conv2", "pool2", "conv3", "fc1", "fc2"]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 8 * 8, 128), (128, 10)]


def test_group_norm_option_has_no_batchnorm():
    model = build_model("resnet18", (3, 32, 32), norm="group", width=8)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())


@pytest.mark.parametrize("k", [-1, 8, 2.5, True])
def test_invalid_split_point_is_rejected_with_valid_range(k):
    model = build_model("vgg5")
    with pytest.raises(ValueError, match=r"0\.\.7"):
        model.split(k)


def test_unknown_model_and_norm_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("vgg5", norm="layer")


def test_model_spec_round_trips_through_json_dict():
    spec = ModelSpec("resnet18", (3, 32, 32), 10, "group", {"width": 16})
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    assert build_model(again).state_dict().keys() == build_model(spec).state_dict().keys()
    with pytest.raises(ValueError, match="invalid model spec"):
        ModelSpec.from_dict({"name": "vgg5"})
