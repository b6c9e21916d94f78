"""Benchmark ``pruning``: DNNShifter's pruned model portfolio on Fashion-MNIST (VGG-16 and ResNet-18).

For each model: dense training, IMP with rewinding to 2x ... 256x compression of the conv weights, lossless surgery
of every level, then per level the size reduction and CPU latency speed-up of the surgered model against the sparse
model as stored (dense shapes, zeros, BatchNorm) and against the BN-fused dense model (so the gain from surgery is
not confused with BN folding), accuracy before/after surgery and the largest output difference; the time to
produce the portfolio against training the same architectures from scratch; switching between resident variants
against reloading one from disk, and the memory the resident portfolio takes.

Schedules (stated in the JSON under ``details.schedule``, per model under ``details.models[i].schedule``) fit a
2-core machine: reduced widths, a part of an epoch per level. VGG-16 gets the longer schedule of the headline
figures (``size_reduction_vs_dense_128x``/``_256x``, ``cpu_speedup_vs_sparse_128x``/``_256x`` and against the
BN-fused dense model, next to DNNShifter's VGG-16 table in ``details.vs_paper_vgg16``): 8 levels to 256x, 0.6 epoch
of retraining per level, rewinding to the trained dense weights (late rewinding: a deviation from DNNShifter's
early rewind point, see docs/pruning.md for why); ResNet-18 keeps the short one (rewind after 20 batches, 0.3
epoch). One torch thread. Full mode: 15.4 min measured on the 2-core machine shared with other jobs (VGG-16's
IMP: 5.5 min); ``--quick``: two levels (2x, 256x) of tiny models, no 128x figures.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import ImageData, load_dataset
from edgeflower.models.zoo import build_model
from edgeflower.pruning import (
    IMPConfig,
    Portfolio,
    Switcher,
    build_from_arch,
    count_params,
    cpu_latency_ms,
    fuse_batchnorm,
    geometric_compressions,
    make_portfolio,
    state_bytes,
)
from edgeflower.pruning.plot import ParetoSeries, plot_pareto_series
from edgeflower.training import make_optimizer, train_local

NAME = "pruning"

FULL = {
    "models": [("vgg16", {"width": 0.25}), ("resnet18", {"width": 16})],
    "train_samples": 16000,
    "test_samples": 2000,
    "batch_size": 128,
    "dense_epochs": 1.0,
    "rewind_batches": None,  # None: rewind to the end of dense training (late rewinding, see docs/pruning.md)
    "max_compression": 256,
    "levels_per_doubling": 1,  # 8 IMP levels halving the conv weights (more, shorter levels collapse layers)
    "retrain_epochs": 0.6,
    "portfolio": [2, 4, 8, 16, 32, 64, 128, 256],  # the IMP levels that become variants
    "lr": 0.05,
    "latency_repeats": 30,
    "scratch_timing_batches": 8,
    "switches": 200,
    # ResNet-18 keeps the short schedule (its surgery already removes 14x at 256x with it; the budget goes to VGG-16)
    "per_model": {"resnet18": {"levels_per_doubling": 1, "retrain_epochs": 0.3, "rewind_batches": 20}},
}
QUICK = {
    **FULL,
    "models": [("vgg16", {"width": 0.125}), ("resnet18", {"width": 8})],
    "train_samples": 640,
    "test_samples": 100,
    "batch_size": 64,
    "dense_epochs": 0.3,
    "rewind_batches": 2,
    "compressions": [2, 256],  # two IMP levels, both variants (cheap for CI; no 128x figures in quick mode)
    "retrain_epochs": 0.1,
    "portfolio": [2, 256],
    "latency_repeats": 3,
    "latency_rounds": 1,  # interleaved rounds of latency timings (full mode: 3, see _latency)
    "scratch_timing_batches": 1,
    "switches": 10,
    "per_model": {},
}

PAPER_VGG16 = {
    "source": "DNNShifter (Eccles et al., 2023), VGG-16 with BN on CIFAR-10, 14.73 M parameters",
    "dense_params": 14.73e6,
    "128x": {"params": 5.29e6, "size_reduction_vs_dense": 2.78, "cpu_speedup_vs_sparse": 1.71},
    "256x": {"params": 2.86e6, "size_reduction_vs_dense": 5.14, "cpu_speedup_vs_sparse": 2.04},
}
"""The paper's VGG-16 table (docs/pruning.md), reported next to the measured figures."""


def model_schedule(name: str, s: dict[str, Any]) -> dict[str, Any]:
    """The schedule of one model: the shared one with the model's ``per_model`` overrides applied."""
    return {**{k: v for k, v in s.items() if k != "per_model"}, **s.get("per_model", {}).get(name, {})}


def _train_s_per_batch(arch: dict[str, Any], train: ImageData, batch_size: int, n: int) -> float:
    """Measured seconds per SGD step of an architecture trained from scratch (one warm-up step first)."""
    model = build_from_arch(arch).train()
    opt = make_optimizer(model.parameters(), 0.01, 0.9)
    batches = [
        (train.x[i * batch_size : (i + 1) * batch_size], train.y[i * batch_size : (i + 1) * batch_size])
        for i in range(n + 1)
    ]
    train_local(model, batches[:1], opt)
    t0 = time.perf_counter()
    train_local(model, batches[1:], opt)
    return (time.perf_counter() - t0) / n


def _latency(models: dict[str, torch.nn.Module], batch: int, repeats: int, rounds: int = 3) -> dict[str, float]:
    """Median latency per model, measured in interleaved rounds; the best round's median is kept (less noise)."""
    best = {k: float("inf") for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            best[k] = min(best[k], cpu_latency_ms(m, (1, 28, 28), batch, max(1, repeats // rounds)))
    return best


def _switching(root: Path, test: ImageData, switches: int) -> dict[str, Any]:
    pf = Portfolio.load(root)
    switcher = Switcher(pf)
    names = pf.names
    served, errors, stop = [0], [], threading.Event()

    def serve() -> None:  # requests keep flowing while variants are swapped
        try:
            while not stop.is_set():
                switcher(test.x[:1])
                served[0] += 1
        except Exception as exc:
            errors.append(repr(exc))

    thread = threading.Thread(target=serve)
    thread.start()
    times = [switcher.switch(names[i % len(names)]).seconds for i in range(switches)]
    time.sleep(0.2)
    stop.set()
    thread.join()
    reload = []
    for name in names:
        for _ in range(3):
            t0 = time.perf_counter()
            pf.load_model(name)
            reload.append(time.perf_counter() - t0)
    switch_ms, reload_ms = 1000 * statistics.median(times), 1000 * statistics.median(reload)
    return {
        "switch_ms": switch_ms,
        "reload_ms": reload_ms,
        "reload_over_switch": reload_ms / switch_ms,
        "requests_served_while_switching": served[0],
        "serving_errors": errors,
        "resident_bytes": switcher.resident_bytes(),
    }


def run_model(name: str, opts: dict[str, Any], train: ImageData, test: ImageData, s: dict[str, Any]) -> dict[str, Any]:
    """Everything measured for one model."""
    s = model_schedule(name, s)
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10, "batch", **opts)
    cfg = IMPConfig(
        compressions=tuple(
            s.get("compressions") or geometric_compressions(s["max_compression"], s["levels_per_doubling"])
        ),
        retrain_epochs=s["retrain_epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=0,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f"pruning-{name}-"))
    res = make_portfolio(
        model, train, test, cfg, s["dense_epochs"], s["rewind_batches"], tmp, progress=True, variants=s["portfolio"]
    )
    reps, rounds = s["latency_repeats"], s.get("latency_rounds", 3)
    dense = build_model(name, (1, 28, 28), 10, "batch", **opts)
    dense.load_state_dict(res.dense_state)
    dense.eval()
    fused = fuse_batchnorm(dense)
    base = {
        "dense_params": count_params(dense),
        "dense_bytes": state_bytes(dense),
        "fused_params": count_params(fused),
        "dense_ms": {b: _latency({"d": dense}, b, reps, rounds)["d"] for b in (1, 32)},
        "fused_ms": {b: _latency({"f": fused}, b, reps, rounds)["f"] for b in (1, 32)},
        "dense_accuracy": res.portfolio.meta["dense"]["accuracy"],
    }
    dense_batches = round(s["dense_epochs"] * -(-len(train) // s["batch_size"]))
    rows, scratch_s = [], 0.0
    for level, v in tqdm(list(zip(res.levels, res.portfolio.variants, strict=True)), desc=f"{name} measure"):
        sparse = build_model(name, (1, 28, 28), 10, "batch", **opts)
        sparse.load_state_dict(level.state_dict)
        sparse.eval()
        lat = {b: _latency({"sparse": sparse, "surgered": v.model, "fused": fused}, b, reps, rounds) for b in (1, 32)}
        sparse_ms = {b: lat[b]["sparse"] for b in (1, 32)}
        surg_ms = {b: lat[b]["surgered"] for b in (1, 32)}
        fused_ms = {b: lat[b]["fused"] for b in (1, 32)}
        step_s = _train_s_per_batch(v.arch, train, s["batch_size"], s["scratch_timing_batches"])
        scratch_s += step_s * dense_batches
        rows.append(
            {
                "variant": v.name,
                "compression": round(v.compression, 2),
                "sparse_params": count_params(sparse),
                "params": v.params,
                "size_reduction": count_params(sparse) / v.params,
                "bytes_reduction": state_bytes(sparse) / v.bytes,
                "sparse_ms_b1": sparse_ms[1],
                "ms_b1": surg_ms[1],
                "speedup_b1": sparse_ms[1] / surg_ms[1],
                "speedup_vs_fused_b1": fused_ms[1] / surg_ms[1],
                "sparse_ms_b32": sparse_ms[32],
                "ms_b32": surg_ms[32],
                "speedup_b32": sparse_ms[32] / surg_ms[32],
                "speedup_vs_fused_b32": fused_ms[32] / surg_ms[32],
                "acc_sparse": level.accuracy,
                "acc_surgered": v.accuracy,
                "max_abs_diff": v.extra["max_abs_diff"],
                "surgery_ms": 1000 * v.extra["surgery_s"],
            }
        )
    print_table(rows, title=f"{name} {opts}")
    switching = _switching(res.path, test, s["switches"])
    shutil.rmtree(tmp, ignore_errors=True)
    n = len(rows)
    return {
        "model": name,
        "options": opts,
        "schedule": {k: v for k, v in s.items() if k != "models"},
        "imp_levels": res.trace,
        "baseline": base,
        "levels": rows,
        "portfolio": res.portfolio,
        "times": {
            "dense_training_s": res.dense_s,
            "imp_s": res.imp_s,
            "surgery_s": res.surgery_s,
            "scratch_training_s": scratch_s,
            "scratch_batches_per_variant": dense_batches,
        },
        "switching": switching,
        "memory": {
            "resident_portfolio_bytes": switching["resident_bytes"],
            "sparse_portfolio_bytes": n * base["dense_bytes"],
            "dense_model_bytes": base["dense_bytes"],
        },
    }


def level_at(levels: list[dict[str, Any]], nominal: float) -> dict[str, Any] | None:
    """The measured level whose compression is ``nominal`` (within 2 %: measured 255.97 is 256x), if any."""
    found = [x for x in levels if abs(math.log(x["compression"] / nominal)) < 0.02]
    return found[0] if found else None


def paper_figures(levels: list[dict[str, Any]], nominals: tuple[int, ...] = (128, 256)) -> dict[str, float]:
    """The figures of DNNShifter's VGG-16 table at ``nominals`` compression (levels that were measured only).

    ``size_reduction_vs_dense_<c>x``: parameters of the dense model (the sparse model's shapes) / after surgery;
    ``cpu_speedup_vs_sparse_<c>x``: CPU latency of the sparse model (dense shapes, BatchNorm) / surgered model, at
    batch 1 (``_b32``: batch 32); ``cpu_speedup_vs_fused_dense_<c>x``: the same against the BN-fused dense model
    (what surgery adds beyond BN folding); ``accuracy_<c>x``: test accuracy of the variant.
    """
    out: dict[str, float] = {}
    for c in nominals:
        x = level_at(levels, c)
        if x is None:
            continue
        out[f"size_reduction_vs_dense_{c}x"] = x["size_reduction"]
        out[f"cpu_speedup_vs_sparse_{c}x"] = x["speedup_b1"]
        out[f"cpu_speedup_vs_sparse_b32_{c}x"] = x["speedup_b32"]
        out[f"cpu_speedup_vs_fused_dense_{c}x"] = x["speedup_vs_fused_b1"]
        out[f"cpu_speedup_vs_fused_dense_b32_{c}x"] = x["speedup_vs_fused_b32"]
        out[f"accuracy_{c}x"] = x["acc_surgered"]
    return out


def _figures(r: dict[str, Any]) -> dict[str, float]:
    lv, t, sw, mem = r["levels"], r["times"], r["switching"], r["memory"]
    return {
        **paper_figures(lv),
        "size_reduction_vs_sparse_max": max(x["size_reduction"] for x in lv),
        "latency_speedup_vs_sparse_max": max(x["speedup_b1"] for x in lv),
        "latency_speedup_vs_sparse_max_b32": max(x["speedup_b32"] for x in lv),
        "latency_speedup_vs_fused_dense_max": max(x["speedup_vs_fused_b1"] for x in lv),
        "latency_speedup_vs_fused_dense_max_b32": max(x["speedup_vs_fused_b32"] for x in lv),
        "surgery_max_abs_diff": max(x["max_abs_diff"] for x in lv),
        "accuracy_change_by_surgery_max": max(abs(x["acc_sparse"] - x["acc_surgered"]) for x in lv),
        "dense_accuracy": r["baseline"]["dense_accuracy"],
        "switch_ms": sw["switch_ms"],
        "reload_ms": sw["reload_ms"],
        "switch_vs_reload_ratio": sw["reload_over_switch"],
        "portfolio_vs_retrain_time_ratio": t["scratch_training_s"] / t["surgery_s"],
        "portfolio_incl_imp_vs_retrain_time_ratio": t["scratch_training_s"] / (t["imp_s"] + t["surgery_s"]),
        "memory_sparse_portfolio_vs_resident_ratio": mem["sparse_portfolio_bytes"] / mem["resident_portfolio_bytes"],
    }


def vs_paper(figures: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """Measured VGG-16 figures next to the paper's, per compression level."""
    out: dict[str, dict[str, float | None]] = {}
    for c in (128, 256):
        paper = PAPER_VGG16[f"{c}x"]
        out[f"{c}x"] = {
            "size_reduction_vs_dense": figures.get(f"size_reduction_vs_dense_{c}x"),
            "paper_size_reduction_vs_dense": paper["size_reduction_vs_dense"],
            "cpu_speedup_vs_sparse": figures.get(f"cpu_speedup_vs_sparse_{c}x"),
            "cpu_speedup_vs_fused_dense": figures.get(f"cpu_speedup_vs_fused_dense_{c}x"),
            "paper_cpu_speedup_vs_sparse": paper["cpu_speedup_vs_sparse"],
            "accuracy": figures.get(f"accuracy_{c}x"),
        }
    return out


def _plot_speedups(results: list[dict[str, Any]], path: Path) -> None:
    """Size reduction and latency speed-ups against compression; one colour per model, solid = vs the sparse model,
    dashed = vs the BN-fused dense model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks: set[float] = set()
    for i, r in enumerate(results):
        name, color, lv = model_label(r["model"], r["options"]), colors[i % len(colors)], r["levels"]
        c = [x["compression"] for x in lv]
        ticks.update(2.0 ** round(math.log2(v)) for v in c)  # the nominal levels (measured: 255.97)
        axes[0].plot(c, [x["size_reduction"] for x in lv], "o-", color=color, label=name)
        for ax, b in ((axes[1], "b1"), (axes[2], "b32")):
            ax.plot(c, [x[f"speedup_{b}"] for x in lv], "o-", color=color, label=f"{name} vs sparse")
            ax.plot(c, [x[f"speedup_vs_fused_{b}"] for x in lv], "x--", color=color, label=f"{name} vs BN-fused dense")
    titles = ["parameters: sparse / surgered", "CPU latency speed-up, batch 1", "CPU latency speed-up, batch 32"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [f"{v:g}" for v in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("compression of conv weights (x)")
        ax.set_title(title)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_MODEL_NAMES = {"vgg16": "VGG-16", "vgg11": "VGG-11", "vgg5": "VGG-5", "resnet18": "ResNet-18", "resnet34": "ResNet-34"}


def model_label(model: str, options: dict[str, Any]) -> str:
    """A readable series name: ``("vgg16", {"width": 0.25})`` -> ``"VGG-16 (width 0.25)"``."""
    opts = ", ".join(f"{k} {v}" for k, v in options.items())
    name = _MODEL_NAMES.get(model, model)
    return f"{name} ({opts})" if opts else name


def pareto_series(model: dict[str, Any]) -> ParetoSeries:
    """The Pareto plot's points of one model's ``details["models"]`` entry (what the JSON keeps): per variant the
    surgered model's latency at batch 1 (``ms_b1``), its weight bytes (the sparse model's, which are the dense
    model's, over ``bytes_reduction``) and accuracy; the dense baseline from ``baseline``."""
    base, levels = model["baseline"], model["levels"]
    dense_mb = base["dense_bytes"] / 1e6
    return ParetoSeries(
        label=model_label(model["model"], model["options"]),
        names=[lv["variant"] for lv in levels],
        latency_ms=[lv["ms_b1"] for lv in levels],
        megabytes=[dense_mb / lv["bytes_reduction"] for lv in levels],
        accuracy_pct=[100 * lv["acc_surgered"] for lv in levels],
        dense=(_batch1(base["dense_ms"]), dense_mb, 100 * base["dense_accuracy"]),
    )


def _batch1(ms: dict[Any, float]) -> float:
    return float(ms[1] if 1 in ms else ms["1"])


def plot_figures(models: list[dict[str, Any]], args: Any) -> list[Path]:
    """Draw ``pruning.png`` (Pareto) and ``pruning_speedup.png`` from per-model results (live or from the JSON)."""
    pareto = plot_pareto_series(
        [pareto_series(m) for m in models],
        png_path(NAME, args),
        title="Fashion-MNIST portfolios: accuracy vs CPU latency (batch 1) and size",
    )
    speedup = png_path(NAME, args, "_speedup")
    _plot_speedups(models, speedup)
    return [pareto, speedup]


def replot(json_path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Redraw the PNGs from a written ``pruning.json`` without measuring anything (next to it unless ``out``)."""
    src = Path(json_path)
    data = json.loads(src.read_text())
    if data.get("benchmark") != NAME or "models" not in data.get("details", {}):
        raise ValueError(f"{src} is not a {NAME} benchmark result (no details.models)")
    args = argparse.Namespace(out=Path(out) if out is not None else src.parent, quick=bool(data.get("quick")))
    return plot_figures(data["details"]["models"], args)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="JSON",
        help="only redraw the PNGs from a pruning.json into --out (no measurement)",
    )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with ``--replot JSON``, only redraw its pictures)."""
    args = parse_args(NAME, argv, extra=_options)
    if args.replot is not None:
        for png in replot(args.replot, args.out):
            print(png)
        return
    s = QUICK if args.quick else FULL
    # One torch thread for training and latency: on a shared 2-core machine two intra-op threads spin against each
    # other and every batch gets several times slower (measured: 4 s instead of 1.5 s per VGG-16 batch).
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = load_dataset("fashion-mnist", train=True).subset(range(s["train_samples"]))
    test = load_dataset("fashion-mnist", train=False).subset(range(s["test_samples"]))
    results = [run_model(name, opts, train, test, s) for name, opts in s["models"]]
    figures = _figures(results[0])
    for r in results[1:]:
        figures.update({f"{r['model']}_{k}": v for k, v in _figures(r).items()})
    plot_figures(results, args)
    details = {
        "schedule": {k: v for k, v in s.items()},
        "definitions": {
            "size_reduction": "parameters of the sparse model as stored (dense shapes) / parameters after surgery",
            "speedup": "median CPU latency of the sparse model (with BatchNorm) / surgered model",
            "speedup_vs_fused": "median CPU latency of the BN-fused dense model / surgered model",
            "portfolio_vs_retrain_time_ratio": "time to train every variant's architecture from scratch with the "
            "dense schedule (measured s per batch x dense batches) / total surgery time of the portfolio",
            "portfolio_incl_imp_vs_retrain_time_ratio": "same numerator / (IMP retraining + surgery time)",
            "switch_vs_reload_ratio": "median time to load a variant from disk (hash check, rebuild, load) / "
            "median in-memory switch time",
        },
        "models": [{k: v for k, v in r.items() if k != "portfolio"} for r in results],
        "paper_vgg16": PAPER_VGG16,
        "vs_paper_vgg16": vs_paper(figures),
        "wall_s": time.perf_counter() - t0,
    }
    write_result(NAME, args, figures, details)


if __name__ == "__main__":
    main()
