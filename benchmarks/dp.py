"""Benchmark ``dp``: the cost and the utility of DP-SGD, and the accuracy of our privacy accounting.

* ``dp_overhead_ratio_fl`` / ``_split`` / ``_pipeline``: time of one local epoch with DP-SGD (Opacus per-sample
  gradients, clipping, noise; ``dp = device``) over the same epoch without DP, on the same model initialisation and
  batches; split modes run against an in-process edge server (``_full``: the edge server's tail private too; the
  pipelined DP head recomputes its forward pass per micro-batch, see :mod:`edgeflower.device.pipeline`).
  Best of several alternating repeats.
* ``dp_vs_opacus_ratio``: edgeflower's DP-SGD step (``BatchDPOptimizer`` + hooks, as a node runs it) over a plain
  Opacus ``PrivacyEngine`` step (``GradSampleModule`` + ``DPOptimizer``) on the same model and the same batches,
  measured side by side with interleaved repeats (best of the repeats, over the sum of the steps).
* ``epsilon_abs_error_vs_independent_device`` / ``_full``: the largest absolute difference, after N rounds of real
  DP training (Poisson masks from the OS's CSPRNG) in ``fl``, ``split`` and ``pipeline`` modes, between the
  cumulative epsilon a node reports and an independent one built here directly with Opacus' ``RDPAccountant``
  (one ``step`` per step) from the published parameters only: the sample rate ``q``, the steps, the mechanisms per
  step, and the noise multiplier of the mechanism as it runs -- per side, the clipping bound ``c_s`` and noise
  std ``s_s`` that the device and the edge server were given, so the joint mechanism's multiplier is
  ``s / sqrt(sum_s c_s^2)``. Opacus' ``PRVAccountant`` on the same mechanism is recorded next to it.
* ``accuracy_at_eps``: federated training (FedAvg over 2 nodes, classic FL, Poisson sampling, noise calibrated from
  the target epsilon over the planned rounds) for N rounds at three target epsilons (delta 1e-5) plus the non-DP
  baseline; test accuracy on Fashion-MNIST.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from flwr.app import RecordDict
from torch import nn
from tqdm import tqdm

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, load_dataset, partition
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.privacy import load_opacus
from edgeflower.privacy.dpsgd import DeviceDP
from edgeflower.privacy.node import NodeRoundDP
from edgeflower.privacy.settings import DPSettings
from edgeflower.training import evaluate, make_optimizer, train_local
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.messages import DPParams

load_opacus()  # Opacus' own import adds a root log handler (every log line twice); this one takes it out
from opacus import PrivacyEngine  # noqa: E402
from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402

SECRET = b"benchmark-dp-secret-0123456789abcdef"
DELTA = 1e-5
B = 100


def _model(width: float) -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg5", norm="group", width=width)


def _epoch(mode: str, dp: str, width: float, batches: list, edge: EdgeServer | None) -> float:
    model = _model(width)
    device = DeviceDP(1.0, 1.0, B, 0.01, torch.Generator().manual_seed(1)) if dp != "off" else None
    if mode == "fl":
        opt: torch.optim.Optimizer = make_optimizer(model.parameters(), 0.05, 0.9)
        hooks = None
        if device is not None:
            opt, hooks, _ = device.wrap(model, opt)
        t0 = time.perf_counter()
        train_local(model, batches, opt)
        seconds = time.perf_counter() - t0
        if hooks is not None:
            hooks.remove_hooks()
        return seconds
    assert edge is not None
    tail_dp = DPParams(1.0, 1.0, B, 0.01, DELTA, 2) if dp == "full" else None
    m = 4 if mode == "pipeline" else 1
    trainer = PipelineTrainer(model, 3, OptimizerSettings(0.05, 0.9), m, dp=device)
    with EdgeClient(edge.address) as client:
        token = TokenIssuer(SECRET).issue(run_id=1, node_id=1, server_round=1)

        def opener(k, tail, opt):  # type: ignore[no-untyped-def]
            return client.open_session(token, model.spec, k, tail, opt, dp=tail_dp)

        result = trainer.train(batches, opener)
    assert not result.fell_back
    return result.seconds


def overhead(samples: int, width: float, repeats: int) -> tuple[dict[str, float], list[dict]]:
    data = load_dataset("fashion-mnist").subset(range(samples))
    batches = list(BatchLoader(data, B, seed=0).batches(0))
    rows, figures = [], {}
    with EdgeServer(secret=SECRET) as edge:
        cases = [("fl", "device"), ("split", "device"), ("split", "full"), ("pipeline", "device"), ("pipeline", "full")]
        for mode, dp in tqdm(cases, desc="DP overhead"):
            plain, private = [], []
            for _ in range(repeats):
                plain.append(_epoch(mode, "off", width, batches, edge))
                private.append(_epoch(mode, dp, width, batches, edge))
            ratio = min(private) / min(plain)
            suffix = "" if dp == "device" else "_full"
            figures[f"dp_overhead_ratio_{mode}{suffix}"] = ratio
            rows.append({"mode": mode, "dp": dp, "plain_s": min(plain), "dp_s": min(private), "ratio": ratio})
    return figures, rows


def _node_round(mode: str, node: NodeRoundDP, model: nn.Module, data, edge: EdgeServer) -> dict[str, float]:
    """One node round of real DP training in ``mode``; returns the node's reported metrics and the mechanism."""
    device = node.device()
    tail_dp = node.tail_params()
    sides = [(device.max_grad_norm, device.noise_multiplier * device.max_grad_norm)]  # (clip c_s, noise std s_s)
    if mode == "fl":
        opt, hooks, _ = device.wrap(model, make_optimizer(model.parameters(), 0.05, 0.9))
        train_local(model, node.batches(data.x, data.y), opt)
        hooks.remove_hooks()
        metrics = node.finish()
    else:
        m = 2 if mode == "pipeline" else 1
        trainer = PipelineTrainer(model, 3, OptimizerSettings(0.05, 0.9), m, dp=device)
        with EdgeClient(edge.address) as client:
            token = TokenIssuer(SECRET).issue(run_id=1, node_id=1, server_round=1)

            def opener(k, tail, opt):  # type: ignore[no-untyped-def]
                return client.open_session(token, model.spec, k, tail, opt, dp=tail_dp)

            result = trainer.train(node.batches(data.x, data.y), opener)
        assert not result.fell_back
        metrics = node.finish(result.server_metrics)
        if tail_dp is not None:  # what the edge server was given for the tail
            sides.append((tail_dp.max_grad_norm, tail_dp.noise_multiplier * tail_dp.max_grad_norm))
    stds = {round(std, 12) for _, std in sides}
    assert len(stds) == 1, "every side adds the same noise std"
    metrics["mechanism-noise-multiplier"] = sides[0][1] / math.sqrt(sum(c * c for c, _ in sides))
    return metrics


def epsilon_check(rounds: int, samples: int, batch: int, width: float, noise: float) -> tuple[dict, list[dict]]:
    """Reported cumulative epsilon vs an independent Opacus accountant, per mode and ``dp``, after ``rounds``."""
    data = load_dataset("fashion-mnist").subset(range(samples))
    rows, worst = [], {"device": 0.0, "full": 0.0}
    with EdgeServer(secret=SECRET) as edge:
        cases = [(mode, dp) for dp in ("device", "full") for mode in ("fl", "split", "pipeline")]
        for mode, dp in tqdm(cases, desc="epsilon vs independent accountant"):
            settings = DPSettings(dp, noise, 1.0, 0.0, DELTA, compare=False)
            state, model = RecordDict(), _model(width)
            independent = RDPAccountant()
            for _ in range(rounds):
                node = NodeRoundDP(settings, state, samples, batch, 1, 0, rounds, split=mode != "fl")
                metrics = _node_round(mode, node, model, data, edge)
                sigma, rate = metrics["mechanism-noise-multiplier"], metrics["dp-sample-rate"]
                for _ in range(int(metrics["dp-mechanisms-per-step"]) * node.sampler.drawn):
                    independent.step(noise_multiplier=sigma, sample_rate=rate)
            assert sum(h[2] for h in independent.history) == metrics["dp-steps"]
            prv = PRVAccountant()
            prv.history = list(independent.history)
            reference = independent.get_epsilon(DELTA)
            error = abs(metrics["dp-epsilon"] - reference)
            worst[dp] = max(worst[dp], error)
            rows.append(
                {
                    "mode": mode,
                    "dp": dp,
                    "scope": settings.scope(mode != "fl"),
                    "rounds": rounds,
                    "steps": int(metrics["dp-steps"]),
                    "q": metrics["dp-sample-rate"],
                    "mechanism_sigma": metrics["mechanism-noise-multiplier"],
                    "epsilon_reported": metrics["dp-epsilon"],
                    "epsilon_independent_rdp": reference,
                    "epsilon_independent_prv": float(prv.get_epsilon(DELTA)),
                    "abs_error": error,
                }
            )
    return {f"epsilon_abs_error_vs_independent_{dp}": v for dp, v in worst.items()}, rows


def _plain_loss_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def opacus_comparison(samples: int, width: float, repeats: int) -> tuple[float, dict]:
    """edgeflower's DP-SGD step time over plain Opacus' on the same model and batches (interleaved repeats).

    The figure is the sum over the batches of each batch's fastest step (over ``repeats``), edgeflower's over
    Opacus'; the median of the paired per-step ratios is recorded too.
    """
    data = load_dataset("fashion-mnist").subset(range(samples))
    batches = list(BatchLoader(data, B, seed=0).batches(0))

    ours_model = _model(width)
    ours_opt, hooks, _ = DeviceDP(1.0, 1.0, B, 0.01, torch.Generator().manual_seed(1)).wrap(
        ours_model, make_optimizer(ours_model.parameters(), 0.05, 0.9)
    )
    engine = PrivacyEngine(accountant="rdp")
    plain_model = _model(width)
    for sub in plain_model.modules():  # Opacus' hooks cannot follow in-place activations
        if getattr(sub, "inplace", False):
            sub.inplace = False
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x, data.y), batch_size=B)
    opacus_model, opacus_opt, _ = engine.make_private(
        module=plain_model,
        optimizer=make_optimizer(plain_model.parameters(), 0.05, 0.9),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )
    contenders = {"edgeflower": (ours_model, ours_opt), "opacus": (opacus_model, opacus_opt)}
    for model, opt in contenders.values():  # warm-up
        _plain_loss_step(model, opt, *batches[0])
    # one step at a time, the two side by side on the same batch, in alternating order: on a shared machine the
    # fastest of a batch's repeats is the closest to the step's own cost
    times: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in contenders}
    for r in tqdm(range(repeats), desc="edgeflower vs Opacus"):
        for b, (x, y) in enumerate(batches):
            order = list(contenders) if (r + b) % 2 == 0 else list(reversed(contenders))
            for name in order:
                model, opt = contenders[name]
                t0 = time.perf_counter()
                _plain_loss_step(model, opt, x, y)
                times[name][b].append(time.perf_counter() - t0)
    hooks.remove_hooks()
    best = {name: sum(min(per_batch) for per_batch in t) for name, t in times.items()}
    ratio = best["edgeflower"] / best["opacus"]
    pairs = zip(times["edgeflower"], times["opacus"], strict=True)
    paired = sorted(a / b for ta, tb in pairs for a, b in zip(ta, tb, strict=True))
    details = {
        "steps": len(batches),
        "repeats": repeats,
        "edgeflower_best_s": best["edgeflower"],
        "opacus_best_s": best["opacus"],
        "ratio_median_paired": paired[len(paired) // 2],
    }
    return ratio, details


def accuracy(targets: list[float], rounds: int, per_node: int, width: float, eval_samples: int) -> list[dict]:
    train = load_dataset("fashion-mnist")
    test = load_dataset("fashion-mnist", train=False).subset(range(eval_samples))
    parts = partition(train.y.numpy(), 10, "iid", seed=0)[:2]
    nodes = [train.subset(p[:per_node]) for p in parts]
    rows = []
    for target in tqdm([0.0, *targets], desc="accuracy at epsilon"):
        settings = DPSettings("device", 0.0, 1.0, target, DELTA, compare=False) if target else None
        states = [RecordDict() for _ in nodes]
        global_model = _model(width)
        eps, noise = 0.0, 0.0
        for rnd in range(1, rounds + 1):
            updates = []
            for i, data in enumerate(nodes):
                model = copy.deepcopy(global_model)
                opt: torch.optim.Optimizer = make_optimizer(model.parameters(), 0.05, 0.9)
                if settings is None:
                    train_local(model, BatchLoader(data, B, seed=rnd * 10 + i).batches(0), opt)
                else:
                    node = NodeRoundDP(settings, states[i], len(data), B, 1, 0, rounds, split=False)
                    opt, hooks, _ = node.device().wrap(model, opt)
                    train_local(model, node.batches(data.x, data.y), opt)
                    hooks.remove_hooks()
                    eps = max(eps, node.finish()["dp-epsilon"])
                    noise = node.noise_multiplier
                updates.append(model.state_dict())
            global_model.load_state_dict({k: sum(u[k] for u in updates) / len(updates) for k in updates[0]})
        _, acc = evaluate(global_model, test)
        rows.append(
            {
                "target_epsilon": target or float("inf"),
                "epsilon_spent": eps if settings else float("inf"),
                "noise_multiplier": noise,
                "rounds": rounds,
                "test_accuracy": acc,
            }
        )
    return rows


def _finite(value: float) -> float | None:
    """``None`` for infinity (strict JSON has no Infinity)."""
    return None if isinstance(value, float) and math.isinf(value) else value


def main() -> None:
    args = parse_args(
        "dp",
        extra=lambda p: p.add_argument(
            "--small", action="store_true", help="full mode (10 rounds of accounting) sized for a busy 2-core CPU"
        ),
    )
    torch.manual_seed(0)
    if args.quick:
        samples, width, repeats = 100, 0.25, 1
        targets, rounds, per_node, eval_samples = [4.0], 1, 200, 100
        eps_rounds, eps_samples, eps_batch, cmp_samples, cmp_repeats = 1, 60, 20, 100, 1
    elif getattr(args, "small", False):
        samples, width, repeats = 300, 1.0, 1
        targets, rounds, per_node, eval_samples = [1.0, 3.0, 8.0], 2, 500, 1000
        eps_rounds, eps_samples, eps_batch, cmp_samples, cmp_repeats = 10, 60, 20, 300, 4
    else:
        samples, width, repeats = 1000, 1.0, 2
        targets, rounds, per_node, eval_samples = [1.0, 3.0, 8.0], 3, 1500, 2000
        eps_rounds, eps_samples, eps_batch, cmp_samples, cmp_repeats = 10, 600, 20, 500, 5
    figures, overhead_rows = overhead(samples, width, repeats)
    print_table(overhead_rows, title="DP overhead (one local epoch, DP over non-DP)")
    figures["dp_vs_opacus_ratio"], opacus_details = opacus_comparison(cmp_samples, width, cmp_repeats)
    print_table([opacus_details], title="edgeflower DP-SGD step vs plain Opacus PrivacyEngine (same model, batches)")
    eps_figures, eps_rows = epsilon_check(eps_rounds, eps_samples, eps_batch, 0.25, 1.0)
    figures.update(eps_figures)
    print_table(eps_rows, title=f"cumulative epsilon after {eps_rounds} rounds vs an independent Opacus accountant")
    acc_rows = accuracy(targets, rounds, per_node, width, eval_samples)
    print_table(acc_rows, title=f"accuracy after {rounds} rounds (FedAvg, 2 nodes, delta {DELTA:g})")
    figures["accuracy_at_eps"] = [  # epsilon None = the non-DP baseline
        {"epsilon": _finite(r["target_epsilon"]), "spent": _finite(r["epsilon_spent"]), "accuracy": r["test_accuracy"]}
        for r in acc_rows
    ]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar([f"{r['mode']}\n{r['dp']}" for r in overhead_rows], [r["ratio"] for r in overhead_rows], color="tab:blue")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_ylabel("epoch time, DP / non-DP")
    ax1.set_title("DP-SGD overhead")
    dp_rows = [r for r in acc_rows if r["target_epsilon"] != float("inf")]
    ax2.plot([r["epsilon_spent"] for r in dp_rows], [100 * r["test_accuracy"] for r in dp_rows], "o-", label="DP-SGD")
    ax2.axhline(100 * acc_rows[0]["test_accuracy"], color="grey", ls="--", label="no DP")
    ax2.set_xlabel(f"epsilon spent (delta {DELTA:g})")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title(f"accuracy after {rounds} rounds")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png_path("dp", args), dpi=120)
    write_result(
        "dp",
        args,
        figures,
        {
            "overhead": overhead_rows,
            "opacus_comparison": opacus_details,
            "epsilon_check": eps_rows,
            "accuracy": [{k: _finite(v) for k, v in r.items()} for r in acc_rows],
            "samples": samples,
            "width": width,
            "rounds": rounds,
            "per_node": per_node,
            "eval_samples": eval_samples,
            "small": bool(getattr(args, "small", False)),
        },
    )


if __name__ == "__main__":
    main()
