"""The pictures a person reads at once: Pareto plot with its dense baseline, the agent's curve with its final reward,
the round's Gantt chart and the per-node round times (checked on the matplotlib figures, not on pixels)."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from edgeflower.plotting import gantt_figure, plot_gantt, plot_round_times
from edgeflower.pruning.plot import ParetoSeries, pareto_figure, plot_pareto_series


def _series() -> list[ParetoSeries]:
    # x4, x8 and x16 sit close together (the crowding of the committed picture); x2 and x4 sit at the same place
    vgg = ParetoSeries(
        "VGG-16 (width 0.25)",
        ["x2", "x4", "x8", "x16", "x256"],
        [0.80, 0.80, 0.81, 0.82, 0.64],
        [3.83, 3.83, 3.82, 3.80, 1.10],
        [79.6, 79.6, 81.8, 79.7, 38.0],
        dense=(1.0, 3.87, 77.8),
    )
    resnet = ParetoSeries(
        "ResNet-18 (width 16)",
        ["x2", "x4", "x256"],
        [1.1, 1.12, 1.1],
        [2.8, 2.8, 0.21],
        [68.1, 81.0, 41.5],
        (1.3, 2.85, 83.4),
    )
    return [vgg, resnet]


def _texts(ax) -> list:
    return [t for t in ax.texts if t.get_visible()]


def test_pareto_marks_each_dense_baseline_names_series_readably_and_no_label_hides_another(tmp_path):
    fig = pareto_figure(_series(), title="t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        texts = _texts(ax)
        names = [t.get_text() for t in texts]
        assert names.count("dense") == 2  # both models' baselines, each labelled
        assert any(n.startswith("x2, x4") for n in names)  # points at the same place share one label
        boxes = [t.get_window_extent(renderer) for t in texts]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), "two point labels overlap"
        dense = [s.dense for s in _series()]
        drawn = {
            tuple(round(float(v), 3) for v in c.get_offsets()[0]) for c in ax.collections if len(c.get_offsets()) == 1
        }
        stars = [d for d in dense if (round(d[fig.axes.index(ax)], 3), round(d[2], 3)) in drawn]
        assert len(stars) == 2  # each dense model drawn as its own marker
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["VGG-16 (width 0.25)", "ResNet-18 (width 16)"]
    assert any("dense" in t for t in legend) and not any("{" in t for t in legend)
    ticks = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_text()]
    assert ticks and all(math.isfinite(float(t)) for t in ticks)  # plain numbers, not 2x10^-1
    assert len(ticks) <= 6
    plt.close(fig)
    assert plot_pareto_series(_series(), tmp_path / "p.png").stat().st_size > 1000


def test_portfolio_pareto_takes_its_dense_baseline_from_the_manifest(tmp_path):
    from types import SimpleNamespace

    from edgeflower.pruning.plot import plot_pareto, series_of

    variants = [
        SimpleNamespace(name=f"x{c}", latency_ms={1: 1.0 / c}, bytes=4e6 / c, accuracy=0.8 - c / 100) for c in (2, 4)
    ]
    dense = {"latency_ms": {1: 1.2, 32: 9.0}, "bytes": 4_000_000, "accuracy": 0.81}
    pf = SimpleNamespace(variants=variants, meta={"dense": dense})
    assert series_of("vgg5", pf).dense == pytest.approx((1.2, 4.0, 81.0))
    assert series_of("vgg5", SimpleNamespace(variants=variants, meta={})).dense is None  # no baseline: none drawn
    assert plot_pareto([("vgg5", pf)], tmp_path / "pareto.png").stat().st_size > 1000


def test_pruning_benchmark_redraws_its_pictures_from_its_json_without_measuring(tmp_path):
    from benchmarks.pruning import model_label, replot

    def level(name: str, c: float, acc: float) -> dict:
        return {"variant": name, "compression": c, "ms_b1": 0.8, "bytes_reduction": c / 2 + 0.5, "acc_surgered": acc,
                "size_reduction": c / 2, "speedup_b1": 1.1, "speedup_vs_fused_b1": 1.0, "speedup_b32": 1.2,
                "speedup_vs_fused_b32": 1.0}  # fmt: skip

    model = {
        "model": "vgg16",
        "options": {"width": 0.25},
        "baseline": {"dense_bytes": 3_866_688, "dense_ms": {"1": 1.0, "32": 7.0}, "dense_accuracy": 0.78},
        "levels": [level("x2", 2.0, 0.7), level("x256", 255.97, 0.4)],
    }
    src = tmp_path / "pruning.json"
    src.write_text(json.dumps({"benchmark": "pruning", "quick": False, "details": {"models": [model]}}))
    out = replot(src)
    assert [p.name for p in out] == ["pruning.png", "pruning_speedup.png"]
    assert all(p.stat().st_size > 1000 for p in out)
    assert model_label("resnet18", {"width": 16}) == "ResNet-18 (width 16)"
    src.write_text(json.dumps({"benchmark": "dp", "details": {}}))
    with pytest.raises(ValueError, match="not a pruning benchmark result"):
        replot(src)


def test_agent_curve_covers_every_episode_of_every_restart_and_marks_the_final_reward(tmp_path):
    from edgeflower.commands.train_agent import agent_figure, replot_agent
    from edgeflower.planning.errors import PolicyError
    from edgeflower.planning.policy import save_policy
    from edgeflower.planning.ppo import ActorCritic

    runs = [[-20.0 + i * 0.1 for i in range(30)], [-15.0 + i * 0.2 for i in range(30)], [float(i) for i in range(7)]]
    fig = agent_figure(runs, 1, 21.11, 0.0)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["final: 21.11"]
    assert max(max(line.get_xdata(), default=0) for line in ax.get_lines()) == 67  # all 67 episodes drawn
    assert any("(chosen)" in t.get_text() for t in ax.get_legend().get_texts())
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 67]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)

    net = ActorCritic(12, 3, 8)  # 4 state features per group, VGG5's 8 split points
    policy = tmp_path / "agent.pt"
    info = {"scenario": "fedadapt", "chosen_restart": 1, "eval_reward": 21.11, "no_offload_reward": 0.0}
    save_policy(policy, net, "vgg5", 7, {**info, "training_rewards": runs})
    assert replot_agent(policy).stat().st_size > 1000 and policy.with_suffix(".png").is_file()
    save_policy(policy, net, "vgg5", 7, info)  # written before the header kept the history
    with pytest.raises(PolicyError, match="no training history"):
        replot_agent(policy)


def test_gantt_shows_nodes_by_partition_on_the_round_clock_with_local_nodes_and_a_legend(tmp_path):
    spans = [{"phase": "device", "start": 0.0, "end": 1.0}, {"phase": "uplink", "start": 1.0, "end": 2.0}]
    late = {"label": "partition 1", "offset-s": 6.0, "local": False, "intervals": spans}
    local = {"label": "partition 0", "offset-s": 0.3, "local": True,
             "intervals": [{"phase": "device", "start": 0.0, "end": 4.0, "what": "local"}]}  # fmt: skip
    fig = gantt_figure({"9000000000000000001": late, "9000000000000000002": local}, round_s=9.0)
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["partition 1 device", "partition 1 uplink", "partition 0 (+0.3 s) device (local)"]
    bars = [c for c in ax.collections if len(c.get_paths())]
    assert min(p.get_extents().x0 for p in bars[0].get_paths()) == pytest.approx(6.0)  # shifted by its offset
    assert [t.get_text() for t in ax.texts] == ["starts at 6.0 s"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"device", "uplink", "server", "downlink", "trained locally", "waiting to start", "round ends"} <= set(
        legend
    )
    plt.close(fig)
    assert plot_gantt({"a": late}, tmp_path / "g.png").stat().st_size > 1000


def test_round_times_have_integer_round_ticks_and_every_node_in_the_legend(tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda self, *a, **k: captured.setdefault("fig", self))
    times = {r: {"a": 2.0, "b": 2.0, "c": 5.0, "d": 5.0} for r in (1, 2, 3)}  # equal times: lines on top of each other
    plot_round_times(times, tmp_path / "r.png", {n: f"partition {i}" for i, n in enumerate("abcd")})
    ax = captured["fig"].axes[0]
    captured["fig"].canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"partition {i}" for i in range(4)]
    markers = {line.get_marker() for line in ax.get_lines()}
    assert len(markers) == 4  # each node its own marker, so equal lines stay distinguishable
