"""``edgeflower portfolio show``: the variants of a portfolio with their measured figures."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["print_portfolio", "register", "show"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``portfolio`` subcommand (``portfolio show``)."""
    p = sub.add_parser("portfolio", help="inspect a pruned model portfolio")
    inner = p.add_subparsers(dest="portfolio_command", metavar="ACTION", required=True)
    show_p = inner.add_parser("show", help="list the variants and their figures")
    show_p.add_argument("path", type=Path, help="portfolio directory")
    show_p.add_argument("--verify", action="store_true", help="load every variant (checks hashes and shapes)")
    show_p.add_argument("--plot", type=Path, default=None, help="write the Pareto plot to this PNG")
    show_p.set_defaults(func=show)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_portfolio(portfolio) -> str:  # type: ignore[no-untyped-def]
    """Print the portfolio's table (one row per variant, plus the dense model when recorded) and return it.

    ``of dense`` is a variant's parameter count over the dense model's; variants surgery could not make smaller
    are named in a note below the table (see :data:`~edgeflower.pruning.portfolio.MIN_STRUCTURAL_SAVING`).
    """
    from edgeflower.pruning.portfolio import MIN_STRUCTURAL_SAVING

    rows = []
    dense = portfolio.meta.get("dense")
    if dense:
        lat = {str(k): v for k, v in dense.get("latency_ms", {}).items()}
        rows.append(
            [
                "dense",
                "1",
                dense.get("params"),
                dense.get("bytes"),
                dense.get("accuracy"),
                lat.get("1"),
                lat.get("32"),
                "100%",
                "",
            ]
        )
    for v in portfolio.variants:
        rows.append(
            [
                v.name,
                f"{v.compression:.1f}",
                v.params,
                v.bytes,
                v.accuracy,
                v.latency_ms.get(1),
                v.latency_ms.get(32),
                "-" if v.structural_saving is None else f"{100 * (1 - v.structural_saving):.1f}%",
                v.extra.get("sparse_accuracy", ""),
            ]
        )
    head = ["variant", "compression", "params", "bytes", "accuracy", "ms@1", "ms@32", "of dense", "sparse acc"]
    cells = [[_fmt(c) if c is not None else "-" for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    spec = portfolio.spec
    lines = [
        f"portfolio of {spec.name} {dict(spec.options)} on input {tuple(spec.in_shape)}, {len(portfolio)} variants"
    ]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    same = portfolio.not_smaller()
    if same:
        smaller = [v.name for v in portfolio.variants if v.structurally_smaller]
        lines.append(
            f"note: {', '.join(v.name for v in same)} {'is' if len(same) == 1 else 'are'} not structurally smaller "
            f"than the dense model (surgery removed under {MIN_STRUCTURAL_SAVING:.0%} of its parameters): magnitude "
            "pruning zeroed scattered weights, not whole channels, so they have the dense model's size and speed; "
            "their compression is sparsity (see 'sparse acc'), useful only with a sparse runtime. "
            + (f"Smaller models: {', '.join(smaller)}." if smaller else "No level removed whole channels.")
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def show(args: argparse.Namespace) -> int:
    """Execute ``edgeflower portfolio show``."""
    from edgeflower.pruning import Portfolio, PortfolioError, plot_pareto

    try:
        pf = Portfolio.load(args.path, models=args.verify)
    except PortfolioError as exc:
        raise ValueError(str(exc)) from exc
    print_portfolio(pf)
    if args.verify:
        print(f"all {len(pf)} variants verified (hashes, architecture, weights)")
    if args.plot is not None:
        plot_pareto([(pf.spec.name, pf)], args.plot, title=f"{pf.spec.name} portfolio")
        print(f"wrote {args.plot}")
    return 0
