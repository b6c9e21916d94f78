"""Every benchmark runs in --quick mode and honours the output contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHMARKS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "common" and not p.stem.startswith("_")
)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_writes_json_and_png(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{name}.quick.json").read_text())
    assert result["benchmark"] == name and result["quick"] is True
    assert result["machine"]["cores"] and result["figures"]
    assert list(tmp_path.glob(f"{name}*.png"))


def test_committed_full_results_follow_the_contract():
    for path in (ROOT / "results").glob("*.json"):
        if path.name.endswith(".quick.json"):
            continue
        result = json.loads(path.read_text())
        assert result["benchmark"] == path.stem and result["quick"] is False and result["figures"], path
