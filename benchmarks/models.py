"""Bring your own model: torchvision classification models made splittable, split training, and surgery.

For each model (built without weights, nothing downloaded): :func:`edgeflower.models.splittable` traces it with
``torch.fx``; then

* ``split_merge_max_abs_diff``: cut in the middle, ``tail(head(x))`` against the model and the merged state dicts
  against the model's (eval mode);
* ``split_training_max_abs_diff``: the unsplit module and the split model (head and tail with their own SGD, only
  the activation and its gradient crossing) trained on the same 2 batches, dropout off; the largest parameter gap;
* ``surgery_max_abs_diff``: random BatchNorm statistics, 50 % of the weights and 40 % of the filters of every
  convolution zeroed, :func:`edgeflower.pruning.surgery`, output gap in eval mode, or the refusal message.

Figures: ``models_covered``, ``models_split_exact`` (split/merge and split training both <= 1e-5),
``models_surgery_exact`` (<= 1e-4), ``models_surgery_refused`` and ``models_surgery_silently_wrong`` (accepted
but > 1e-4: must be 0).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.models import splittable
from edgeflower.models.checks import split_merge_gap, split_training_gap
from edgeflower.pruning import surgery

NAME = "models"
EXACT = 1e-5
SURGERY_EXACT = 1e-4


def _vit(size: int) -> nn.Module:
    return tvm.vit_b_16(weights=None, num_classes=10, image_size=size)


FULL: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": lambda s: tvm.resnet18(weights=None, num_classes=10),
    "resnet34": lambda s: tvm.resnet34(weights=None, num_classes=10),
    "resnet50": lambda s: tvm.resnet50(weights=None, num_classes=10),
    "mobilenet_v2": lambda s: tvm.mobilenet_v2(weights=None, num_classes=10),
    "mobilenet_v3_small": lambda s: tvm.mobilenet_v3_small(weights=None, num_classes=10),
    "mobilenet_v3_large": lambda s: tvm.mobilenet_v3_large(weights=None, num_classes=10),
    "efficientnet_b0": lambda s: tvm.efficientnet_b0(weights=None, num_classes=10),
    "squeezenet1_1": lambda s: tvm.squeezenet1_1(weights=None, num_classes=10),
    "shufflenet_v2_x0_5": lambda s: tvm.shufflenet_v2_x0_5(weights=None, num_classes=10),
    "mnasnet0_5": lambda s: tvm.mnasnet0_5(weights=None, num_classes=10),
    "regnet_y_400mf": lambda s: tvm.regnet_y_400mf(weights=None, num_classes=10),
    "vgg11_bn": lambda s: tvm.vgg11_bn(weights=None, num_classes=10),
    "alexnet": lambda s: tvm.alexnet(weights=None, num_classes=10),
    "densenet121": lambda s: tvm.densenet121(weights=None, num_classes=10),
    "convnext_tiny": lambda s: tvm.convnext_tiny(weights=None, num_classes=10),
    "vit_b_16": _vit,
}
QUICK = ("resnet18", "mobilenet_v3_small", "squeezenet1_1")


def _sparsify(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 1.5 - 0.5)
            if isinstance(m, nn.Conv2d):
                w = m.weight
                w.mul_((torch.rand(w.shape, generator=gen) > 0.5).float())
                w[torch.rand(w.shape[0], generator=gen) < 0.4] = 0


def surgery_check(module: nn.Module, shape: tuple[int, ...]) -> tuple[float | None, str, int]:
    """``(max abs diff or None, refusal message, channels removed)``."""
    gen = torch.Generator().manual_seed(1)
    _sparsify(module, gen)
    module.eval()
    try:
        result = surgery(module, shape)
    except ValueError as exc:
        return None, str(exc)[:300], 0
    x = torch.randn(2, *shape, generator=gen)
    with torch.no_grad():
        return float((module(x) - result.model(x)).abs().max()), "", result.removed


def run_one(name: str, build: Callable[[int], nn.Module], size: int) -> dict[str, Any]:
    """Every check for one model."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    module = build(size)
    whole = copy.deepcopy(module)
    x = torch.randn(2, 3, size, size)
    model = splittable(module, x)
    k = model.num_blocks // 2
    merge_diff = split_merge_gap(model, x, k)
    batches = [(torch.randn(2, 3, size, size), torch.randint(0, 10, (2,))) for _ in range(2)]
    train_diff = split_training_gap(whole, model, batches, k)
    blocks = model.num_blocks
    del whole, model
    diff, refusal, removed = surgery_check(build(size), (3, size, size))
    row = {
        "model": name,
        "blocks": blocks,
        "split_merge_max_abs_diff": merge_diff,
        "split_training_max_abs_diff": train_diff,
        "surgery_max_abs_diff": diff,
        "surgery_removed_channels": removed,
        "surgery_refusal": refusal,
        "seconds": time.perf_counter() - t0,
    }
    return row


def _plot(rows: list[dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.7), 4))
    pos = range(len(rows))
    for i, (key, label) in enumerate(
        [
            ("split_merge_max_abs_diff", "split/merge"),
            ("split_training_max_abs_diff", "split training"),
            ("surgery_max_abs_diff", "surgery"),
        ]
    ):
        vals = [max(r[key], 1e-12) if r[key] is not None else 0 for r in rows]
        ax.bar([p + (i - 1) * 0.27 for p in pos], vals, width=0.27, label=label)
    ax.set_yscale("log")
    ax.axhline(EXACT, color="k", lw=0.8, ls="--")
    ax.set_xticks(list(pos), names, rotation=45, ha="right")
    ax.set_ylabel("max abs diff (0 shown as 1e-12; no surgery bar = refused)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _options(parser: Any) -> None:
    parser.add_argument("--models", default="", help=f"comma-separated subset of: {', '.join(FULL)}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    args = parse_args(NAME, argv, _options)
    torch.set_num_threads(1)
    names = QUICK if args.quick else tuple(FULL)
    if args.models:
        names = tuple(n.strip() for n in args.models.split(",") if n.strip())
        unknown = sorted(set(names) - set(FULL))
        if unknown:
            raise SystemExit(f"unknown models {unknown}: expected some of {', '.join(FULL)}")
    size = 32 if args.quick else 64
    rows = []
    for name in names:
        rows.append(run_one(name, FULL[name], size))
        print(f"{name}: {rows[-1]}", flush=True)
    print_table([{k: v for k, v in r.items() if k != "surgery_refusal"} for r in rows], title="models")
    split_exact = sum(
        r["split_merge_max_abs_diff"] <= EXACT and r["split_training_max_abs_diff"] <= EXACT for r in rows
    )
    accepted = [r for r in rows if r["surgery_max_abs_diff"] is not None]
    figures = {
        "models_covered": len(rows),
        "models_split_exact": split_exact,
        "models_surgery_exact": sum(r["surgery_max_abs_diff"] <= SURGERY_EXACT for r in accepted),
        "models_surgery_refused": len(rows) - len(accepted),
        "models_surgery_silently_wrong": sum(r["surgery_max_abs_diff"] > SURGERY_EXACT for r in accepted),
        "split_merge_max_abs_diff": max(r["split_merge_max_abs_diff"] for r in rows),
        "split_training_max_abs_diff": max(r["split_training_max_abs_diff"] for r in rows),
        "surgery_max_abs_diff": max((r["surgery_max_abs_diff"] for r in accepted), default=0.0),
    }
    _plot(rows, png_path(NAME, args))
    write_result(NAME, args, figures, {"input_size": size, "models": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
