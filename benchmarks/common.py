"""The benchmark contract shared by every ``benchmarks/NAME.py``.

Each benchmark is run as ``python -m benchmarks.NAME [--quick] [--out results]``, prints a table, and writes
``<out>/NAME.json`` as ``{"benchmark": NAME, "quick": bool, "machine": {...}, "figures": {...}, ...}`` plus at least
one PNG ``<out>/NAME*.png``. ``--quick`` runs a tiny version so CI keeps every benchmark working; quick results are
written as ``NAME.quick.json`` so they never overwrite the committed full-mode results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["BenchArgs", "machine_info", "parse_args", "png_path", "print_table", "write_result"]


class BenchArgs(argparse.Namespace):
    """Parsed benchmark arguments."""

    quick: bool
    out: Path


def parse_args(
    name: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> BenchArgs:
    """Parse ``--quick`` and ``--out`` (and the options ``extra`` adds) for benchmark ``name``.

    Every benchmark calls this first in ``main``, once its imports are done; those imports (torch, Flower: about
    200,000 objects that live as long as the process) then move to the garbage collector's permanent generation,
    so a full collection (each gRPC server's stop runs one) scans only what the benchmark creates: shorter pauses
    in what it times, and 0.3 s less per server stopped.
    """
    gc.collect()
    gc.freeze()
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny run for CI (seconds)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output directory (default: results)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv, namespace=BenchArgs())
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def print_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """Print ``rows`` (dicts with the same keys) as an aligned text table and return it."""
    if not rows:
        return ""
    keys = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [title] if title else []
    lines.append("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_result(name: str, args: BenchArgs, figures: dict[str, Any], details: dict[str, Any] | None = None) -> Path:
    """Write ``<out>/NAME.json`` (``NAME.quick.json`` in quick mode) and print the figures."""
    payload = {
        "benchmark": name,
        "quick": bool(args.quick),
        "machine": machine_info(),
        "figures": figures,
        **({"details": details} if details else {}),
    }
    path = args.out / (f"{name}.quick.json" if args.quick else f"{name}.json")
    path.write_text(json.dumps(payload, indent=2, default=float))
    print_table([{"figure": k, "value": v} for k, v in figures.items()], title=f"{name} figures")
    print(f"wrote {path}", flush=True)
    return path


def png_path(name: str, args: BenchArgs, suffix: str = "") -> Path:
    """Path of a PNG for benchmark ``name`` (``NAME[suffix][.quick].png``)."""
    return args.out / f"{name}{suffix}{'.quick' if args.quick else ''}.png"
