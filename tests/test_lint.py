"""The code base is ruff clean (lint rules in pyproject.toml), complexity included."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ruff_reports_no_problems():
    proc = _ruff("edgeflower", "tests", "benchmarks", "scripts", "examples")
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_a_function_over_complexity_10_fails_the_lint():
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(10))
    source = f'"""A probe."""\n\n\ndef f(x: int) -> int:\n    """Eleven paths."""\n{branches}    return -1\n'
    proc = _ruff("--stdin-filename", "edgeflower/_complexity_probe.py", "-", stdin=source)
    assert proc.returncode == 1 and "C901" in proc.stdout, proc.stdout[-2000:]
    simpler = source.replace("    if x == 9:\n        return 9\n", "")
    assert _ruff("--stdin-filename", "edgeflower/_complexity_probe.py", "-", stdin=simpler).returncode == 0
