"""The longer DNNShifter schedule: geometric IMP targets, portfolio levels chosen among them, late rewinding, and the
benchmark's figures next to the paper's VGG-16 table."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.pruning import PAPER_VGG16, level_at, model_schedule, paper_figures, vs_paper
from edgeflower.data import load_dataset
from edgeflower.models.zoo import build_model
from edgeflower.pruning import (
    IMPConfig,
    SparseLevel,
    geometric_compressions,
    make_portfolio,
    select_levels,
    train_dense,
)


def test_geometric_compressions_prune_a_fixed_share_and_hit_every_power_of_two() -> None:
    cs = geometric_compressions(256, 3)
    assert len(cs) == 24
    assert cs[2::3] == (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)  # exact, so they can name variants
    ratios = [b / a for a, b in zip((1.0, *cs), cs, strict=False)]
    assert all(math.isclose(r, 2 ** (1 / 3)) for r in ratios)  # 20.6 % of the remaining weights per level
    assert geometric_compressions(8) == (2.0, 4.0, 8.0)
    with pytest.raises(ValueError, match="power of two"):
        geometric_compressions(100, 2)
    with pytest.raises(ValueError, match="levels_per_doubling"):
        geometric_compressions(256, 0)


def test_select_levels_keeps_the_portfolio_targets_in_order_and_rejects_unknown_ones() -> None:
    levels = [SparseLevel(c, c, {}, {}) for c in geometric_compressions(16, 2)]
    assert [lv.target for lv in select_levels(levels, [4, 16])] == [4.0, 16.0]
    assert select_levels(levels, None) == levels
    with pytest.raises(ValueError, match=r"\[3\]"):
        select_levels(levels, [4, 3])


def test_make_portfolio_refuses_unknown_variant_levels_before_any_training() -> None:
    model = build_model("vgg5", (1, 28, 28), 10, "batch", width=0.125)
    cfg = IMPConfig(compressions=(2, 4))
    with pytest.raises(ValueError, match="not IMP targets"):
        make_portfolio(model, None, None, cfg, dense_epochs=100.0, variants=[8])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_data() -> tuple:
    return (
        load_dataset("fashion-mnist", train=True).subset(range(256)),
        load_dataset("fashion-mnist", train=False).subset(range(64)),
    )


def test_late_rewinding_rewinds_to_the_trained_weights(small_data: tuple) -> None:
    train, _ = small_data
    torch.manual_seed(0)
    model = build_model("vgg5", (1, 28, 28), 10, "batch", width=0.125)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    rewind = train_dense(model, train, 1.0, IMPConfig(batch_size=64), rewind_batches=None, progress=False)
    trained = model.state_dict()
    assert all(torch.equal(rewind[k], trained[k]) for k in trained)
    assert not torch.equal(rewind["blocks.0.0.weight"], init["blocks.0.0.weight"])


def test_portfolio_holds_only_the_chosen_levels_and_traces_every_imp_level(small_data: tuple) -> None:
    train, test = small_data
    torch.manual_seed(0)
    model = build_model("vgg5", (1, 28, 28), 10, "batch", width=0.125)
    cfg = IMPConfig(compressions=geometric_compressions(16, 2), retrain_epochs=0.25, batch_size=64, seed=0)
    res = make_portfolio(
        model, train, test, cfg, dense_epochs=0.25, rewind_batches=None, progress=False, variants=[4, 16]
    )
    assert [v.name for v in res.portfolio.variants] == ["x4", "x16"]
    assert [lv.target for lv in res.levels] == [4.0, 16.0]
    trace = res.portfolio.meta["imp"]["levels"]
    assert [t["target"] for t in trace] == list(cfg.compressions) and res.trace == trace
    assert all(math.isclose(t["compression"], t["target"], rel_tol=0.01) for t in trace)
    assert res.portfolio.meta["imp"]["variants"] == [4.0, 16.0]
    for v in res.portfolio.variants:
        assert v.extra["max_abs_diff"] <= 1e-4


def _row(c: float, params: int, speed: float) -> dict[str, float]:
    return {
        "compression": c,
        "size_reduction": 1000 / params,
        "speedup_b1": speed,
        "speedup_b32": speed / 2,
        "speedup_vs_fused_b1": speed / 3,
        "speedup_vs_fused_b32": speed / 4,
        "acc_surgered": 0.5,
    }


def test_paper_figures_read_the_128x_and_256x_levels_and_sit_next_to_the_paper() -> None:
    rows = [_row(64.0, 900, 1.1), _row(127.99, 400, 1.5), _row(255.97, 200, 2.0)]
    assert level_at(rows, 256) is rows[2] and level_at(rows, 32) is None
    f = paper_figures(rows)
    assert f["size_reduction_vs_dense_256x"] == 5.0 and f["size_reduction_vs_dense_128x"] == 2.5
    assert f["cpu_speedup_vs_sparse_256x"] == 2.0 and f["cpu_speedup_vs_fused_dense_256x"] == pytest.approx(2 / 3)
    assert f["cpu_speedup_vs_sparse_b32_128x"] == 0.75 and f["accuracy_256x"] == 0.5
    assert "size_reduction_vs_dense_128x" not in paper_figures(rows[2:])  # a level not measured is not invented
    table = vs_paper(f)
    assert table["256x"]["paper_size_reduction_vs_dense"] == PAPER_VGG16["256x"]["size_reduction_vs_dense"] == 5.14
    assert table["256x"]["paper_cpu_speedup_vs_sparse"] == 2.04
    assert table["128x"]["size_reduction_vs_dense"] == 2.5


def test_per_model_overrides_change_only_that_model() -> None:
    s = {"retrain_epochs": 0.6, "levels_per_doubling": 2, "per_model": {"resnet18": {"retrain_epochs": 0.3}}}
    assert model_schedule("resnet18", s) == {"retrain_epochs": 0.3, "levels_per_doubling": 2}
    assert model_schedule("vgg16", s) == {"retrain_epochs": 0.6, "levels_per_doubling": 2}


def test_prune_cli_accepts_late_rewinding_and_portfolio_levels() -> None:
    from edgeflower.cli import build_parser

    parser = build_parser("prune")
    args = parser.parse_args(["prune", "--rewind-batches", "end", "--variants", "4,16", "--out", "pf"])
    assert args.rewind_batches is None and args.variants == [4.0, 16.0]
    args = parser.parse_args(["prune", "--out", "pf"])
    assert args.rewind_batches == 20 and args.variants is None
    for bad in ("-1", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["prune", "--rewind-batches", bad, "--out", "pf"])
