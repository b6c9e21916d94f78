"""``edgeflower serve-bundle``: turn a trained checkpoint (or a portfolio variant) into a serving bundle.

Trains exit heads at the partition's cuts with the backbone frozen, profiles the blocks at the serving batch size
and measures the accuracy of every failover option on validation data (the dataset's test split)::

    edgeflower serve-bundle --checkpoint runs/<run>/model.pt --model vgg5 --cuts 0,2,4,7 --out bundle
    edgeflower serve-bundle --portfolio portfolio/ --variant x16 --cuts 0,2,4,7 --out bundle
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from edgeflower.data import load_dataset
from edgeflower.models.zoo import build_model
from edgeflower.serving.bundle import build_bundle

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``serve-bundle`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve-bundle",
        help="prepare a serving bundle (exit heads, profile, failover estimates) from a trained model",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="state dict of a zoo model (torch.save; loaded weights_only)")
    src.add_argument("--portfolio", type=Path, help="a pruning portfolio directory (with --variant)")
    p.add_argument("--variant", help="portfolio variant name")
    p.add_argument("--model", default="vgg5", help="zoo model of --checkpoint (default: %(default)s)")
    p.add_argument("--width", type=float, help="zoo width option of --checkpoint")
    p.add_argument("--norm", default="batch", help="zoo norm of --checkpoint (default: %(default)s)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset (default: %(default)s)")
    p.add_argument("--cuts", required=True, help="partition, e.g. 0,2,4,7 (node i runs blocks [c_i, c_i+1))")
    p.add_argument("--batch-size", type=int, default=32, help="serving batch size (default: %(default)s)")
    p.add_argument("--exit-samples", type=int, default=10000, help="training samples of the exit heads")
    p.add_argument("--val-samples", type=int, default=5000, help="validation samples of the estimates")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build and save the bundle; return the exit code."""
    cuts = [int(c) for c in args.cuts.split(",")]
    arch = None
    if args.portfolio is not None:
        from edgeflower.pruning.portfolio import Portfolio

        if not args.variant:
            raise ValueError("--portfolio needs --variant")
        portfolio = Portfolio.load(args.portfolio, models=False)
        model = portfolio.load_model(args.variant)
        arch = portfolio[args.variant].arch
    else:
        options: dict[str, Any] = {}
        if args.width is not None:
            options["width"] = int(args.width) if args.model == "resnet18" else args.width
        train = load_dataset(args.dataset, train=True)
        model = build_model(args.model, in_shape=train.in_shape, norm=args.norm, **options)
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True, map_location="cpu"), strict=True)
    train = load_dataset(args.dataset, train=True)
    test = load_dataset(args.dataset, train=False)
    exit_data = train.subset(
        torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.exit_samples]
    )
    bundle = build_bundle(
        model, cuts, exit_data, test.subset(torch.arange(min(args.val_samples, len(test)))), args.batch_size, arch=arch
    )
    out = bundle.save(args.out)
    print(f"serving bundle written to {out}: cuts {list(bundle.cuts)}, accuracy {bundle.accuracy['full']:.4f}")
    return 0
