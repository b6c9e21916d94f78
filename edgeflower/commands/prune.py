"""``edgeflower prune``: build a pruned model portfolio from a zoo model or the checkpoint of an FL run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edgeflower.data import load_dataset
from edgeflower.data.datasets import DATASET_SHAPES, DATASETS
from edgeflower.models.reference import is_reference
from edgeflower.models.splittable import SplittableModel
from edgeflower.models.zoo import NORMS, available_models, build_model

__all__ = ["load_checkpoint", "register", "run"]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _rewind(text: str) -> int | None:
    """``--rewind-batches``: a number of dense batches, or ``end`` for the end of dense training."""
    if text.strip().lower() == "end":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number of batches or 'end', got {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of batches >= 0 or 'end', got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``prune`` subcommand."""
    p = sub.add_parser(
        "prune",
        help="build a pruned model portfolio (IMP + lossless surgery)",
        description="Iterative magnitude pruning with rewinding, structural surgery and measurement of every "
        "variant; writes a portfolio directory (portfolio.json, weight files, pareto.png).",
    )
    src = p.add_argument_group("model")
    src.add_argument("--checkpoint", type=Path, help="FL run directory (config.json + model.pt) or a .pt state dict")
    src.add_argument(
        "--model",
        type=_model_name,
        default="vgg16",
        help=f"zoo model ({', '.join(available_models())}) or your own by reference 'package.module:callable' "
        "(importable here, e.g. run from your app's directory)",
    )
    src.add_argument(
        "--width", type=float, default=None, help="zoo width option (VGG/MobileNet multiplier, ResNet base)"
    )
    src.add_argument("--norm", choices=NORMS, default="batch", help="normalisation layers of the zoo model")
    src.add_argument("--dataset", choices=DATASETS, default="fashion-mnist", help="training and test data")
    src.add_argument("--data-root", default="", help="dataset directory (default: Debian's Fashion-MNIST)")
    tr = p.add_argument_group("schedule")
    tr.add_argument("--dense-epochs", type=float, default=1.0, help="dense training first (ignored with --checkpoint)")
    tr.add_argument(
        "--rewind-batches",
        type=_rewind,
        default=20,
        help="rewind point in dense batches, or 'end' to rewind to the trained dense weights (late rewinding)",
    )
    tr.add_argument(
        "--compressions", type=_floats, default=[2, 4, 8, 16, 32, 64, 128, 256], help="IMP levels (comma-separated)"
    )
    tr.add_argument(
        "--variants",
        type=_floats,
        default=None,
        help="the IMP levels that become variants, e.g. 2,4,...,256 of a longer schedule (default: every level)",
    )
    tr.add_argument("--retrain-epochs", type=float, default=0.5, help="retraining after each pruning level")
    tr.add_argument("--batch-size", type=int, default=128, help="training batch size")
    tr.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    tr.add_argument("--max-batches", type=int, default=0, help="cap on batches per epoch (0 = none)")
    tr.add_argument("--train-samples", type=int, default=0, help="use the first N training samples (0 = all)")
    tr.add_argument("--test-samples", type=int, default=2000, help="test samples for accuracy (0 = all)")
    tr.add_argument("--include-linear", action="store_true", help="prune linear weights too")
    tr.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and pruning ties")
    p.add_argument("--out", type=Path, required=True, help="portfolio directory to write")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def load_checkpoint(path: Path, args: argparse.Namespace) -> tuple[SplittableModel, str]:
    """The model of an FL run directory (its ``config.json`` decides the architecture) or of a ``.pt`` file."""
    from edgeflower.config import AppConfig

    if path.is_dir():
        cfg_file, weights = path / "config.json", path / "model.pt"
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{path}: an FL run directory needs config.json and model.pt")
        cfg = AppConfig.from_run_config(json.loads(cfg_file.read_text()))
        model, dataset = cfg.build_model(), cfg.dataset
    else:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        model, dataset, weights = _zoo(args), args.dataset, path
    state = torch.load(weights, weights_only=True, map_location="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not fit {model.spec.name}: {exc}") from exc
    return model, dataset


def _model_name(value: str) -> str:
    """A zoo name or a well-formed import reference (imported when the model is built)."""
    if value in available_models() or is_reference(value):
        return value
    raise argparse.ArgumentTypeError(
        f"unknown model {value!r}: expected one of {', '.join(available_models())} or 'package.module:callable'"
    )


def _zoo(args: argparse.Namespace) -> SplittableModel:
    options = {}
    if args.width is not None:
        options["width"] = int(args.width) if args.model == "resnet18" else float(args.width)
    return build_model(args.model, DATASET_SHAPES[args.dataset], 10, args.norm, **options)


def run(args: argparse.Namespace) -> int:
    """Execute ``edgeflower prune``."""
    from edgeflower.pruning import IMPConfig, make_portfolio
    from edgeflower.pruning.portfolio import Portfolio

    torch.manual_seed(args.seed)
    if args.checkpoint is not None:
        model, dataset = load_checkpoint(args.checkpoint, args)
        dense_epochs = 0.0
    else:
        model, dataset, dense_epochs = _zoo(args), args.dataset, args.dense_epochs
    root = args.data_root or None
    train = load_dataset(dataset, train=True, root=root)
    test = load_dataset(dataset, train=False, root=root)
    if args.train_samples:
        train = train.subset(range(min(args.train_samples, len(train))))
    if args.test_samples:
        test = test.subset(range(min(args.test_samples, len(test))))
    cfg = IMPConfig(
        compressions=tuple(args.compressions),
        retrain_epochs=args.retrain_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_batches=args.max_batches or None,
        include_linear=args.include_linear,
        seed=args.seed,
    )
    result = make_portfolio(
        model,
        train,
        test,
        cfg,
        dense_epochs,
        args.rewind_batches,
        args.out,
        progress=not args.no_progress,
        variants=args.variants,
    )
    from edgeflower.commands.portfolio import print_portfolio

    print_portfolio(Portfolio.load(args.out, models=False))
    print(f"portfolio written to {result.path} (IMP {result.imp_s:.1f} s, surgery {result.surgery_s * 1000:.0f} ms)")
    return 0
