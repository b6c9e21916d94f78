"""The README's benchmark table states what the committed full runs measured: every figure it names is in that
benchmark's ``results/<name>.json`` and equals it as printed (rounded to the digits shown)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_ROW = re.compile(r"^\| `(?P<bench>[a-z_]+)` \| (?P<figure>.*?) \| (?P<value>[^|]*) \|(?P<ref>[^|]*)\|$")
_NAME = re.compile(r"`(_[a-z0-9][a-z0-9_]*|[a-z][a-z0-9_]*)`")
_NUMBER = re.compile(r"[-+]?\d+(?:\.(?P<decimals>\d+))?(?:e(?P<exp>[-+]?\d+))?")


def _table_rows() -> list[tuple[str, str, str]]:
    """``(benchmark, figure cell, value cell)`` of every row of the README's benchmark table."""
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        m = _ROW.match(line.strip())
        if m and (ROOT / "results" / f"{m['bench']}.json").exists():
            rows.append((m["bench"], m["figure"], m["value"]))
    return rows


def _names(cell: str, figures: dict) -> list[str]:
    """The figures a cell names, in order; ``_suffix`` completes the previous name's stem (``a_bf16`` / ``_int8``)."""
    names: list[str] = []
    for token in _NAME.findall(cell):
        if not token.startswith("_"):
            if token in figures:
                names.append(token)
            continue
        previous = names[-1]
        cuts = [i for i, c in enumerate(previous) if c == "_"]
        stems = [previous[:i] for i in reversed(cuts) if previous[:i] + token in figures]
        assert stems, f"{token!r} completes no stem of {previous!r} to a figure"
        names.append(stems[0] + token)
    return names


def _printed(part: str) -> tuple[float, float]:
    """The first number of a value as printed, and half a unit of its last digit (its rounding)."""
    m = _NUMBER.search(part)
    assert m, f"no number in {part!r}"
    decimals = len(m["decimals"] or "")
    half = 0.5 * 10.0 ** (int(m["exp"] or 0) - decimals)
    return float(m.group(0)), half


def _matches(measured: float, printed: float, half: float, percent: bool) -> bool:
    candidates = [measured, measured * 100] if percent else [measured]
    return any(math.isfinite(x) and abs(x - printed) <= half * (1 + 1e-9) for x in candidates)


def test_the_readme_table_is_read_and_covers_every_benchmark_with_figures() -> None:
    benches = {bench for bench, _, _ in _table_rows()}
    assert {"overhead", "split", "pipeline", "dp", "migration", "fedadapt", "pruning", "failover"} <= benches


@pytest.mark.parametrize(("bench", "figure", "value"), _table_rows(), ids=lambda v: v[:40] if isinstance(v, str) else v)
def test_every_figure_in_the_readme_table_equals_its_committed_result(bench: str, figure: str, value: str) -> None:
    figures = json.loads((ROOT / "results" / f"{bench}.json").read_text())["figures"]
    named = _names(figure, figures)
    assert named, f"{bench}: the row names no figure of results/{bench}.json: {figure}"
    names = [n for n in named if isinstance(figures[n], int | float)]
    if not names:  # a table of its own (e.g. accuracy per epsilon): the benchmark's PNG and JSON carry it
        return
    parts = [p for p in value.split(" / ") if p.strip()]
    assert len(parts) == len(names), f"{bench}: {len(names)} figures {names} but values {value!r}"
    for name, part in zip(names, parts, strict=True):
        printed, half = _printed(part)
        assert _matches(float(figures[name]), printed, half, "%" in part or " pt" in part), (
            f"README says {bench}.{name} = {part.strip()!r}, results/{bench}.json has {figures[name]!r}"
        )
