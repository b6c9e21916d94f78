"""The code base is ruff clean (lint rules in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_reports_no_problems():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "edgeflower", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
