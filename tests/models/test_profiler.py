"""The per-block profiler: figures add up and match the model."""

from __future__ import annotations

import pytest
import torch

from edgeflower.models import ModelProfile, available_models, build_model, count_flops, profile_model


@pytest.mark.parametrize("name", available_models())
def test_block_flops_add_up_to_the_whole_models_flops(name):
    opts = {"width": 8} if name == "resnet18" else ({"width": 0.25} if name != "vgg5" else {})
    model = build_model(name, (3, 32, 32), **opts).eval()
    prof = profile_model(model, measure=False)
    assert prof.total_flops == count_flops(model, torch.randn(1, 3, 32, 32))
    assert prof.total_flops > 0
    assert len(prof.blocks) == model.num_blocks


def test_vgg5_profile_matches_hand_computed_figures():
    model = build_model("vgg5", (1, 28, 28))
    prof = profile_model(model, batch_size=8, repeats=1)
    conv1 = prof.blocks[0]
    assert conv1.flops == 2 * 9 * 1 * 32 * 28 * 28
    assert conv1.out_bytes == 32 * 28 * 28 * 4 and conv1.out_shape == (32, 28, 28)
    # conv weight+bias, BN affine, BN running stats (float32) and num_batches_tracked (int64)
    assert conv1.param_bytes == (32 * 9 + 32) * 4 + (32 + 32) * 4 + (32 + 32) * 4 + 8
    assert prof.blocks[1].out_bytes == 32 * 14 * 14 * 4
    assert prof.boundary_bytes(0) == 28 * 28 * 4 and prof.boundary_bytes(2) == prof.blocks[1].out_bytes
    assert sum(b.param_bytes for b in prof.blocks) == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    assert all(b.fwd_s > 0 for b in prof.blocks if b.flops)
    assert prof.head_flop_share(0) == 0 and prof.head_flop_share(model.num_blocks) == pytest.approx(1.0)


def test_profiling_leaves_the_model_unchanged():
    model = build_model("vgg5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, batch_size=4, repeats=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training


def test_profile_round_trips_through_json():
    prof = profile_model(build_model("vgg5"), measure=False)
    assert ModelProfile.from_json(prof.to_json()) == prof
