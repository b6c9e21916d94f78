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

REQUIRED_FIGURES = {
    "overhead": {"fl_vs_plain_ratio", "round_overhead_s"},
    "split": {
        "split_vs_local_ratio",
        "split_vs_bound_ratio",
        "split_vs_local_ratio_bf16",
        "split_vs_local_ratio_int8",
        "accuracy_delta_bf16",
        "accuracy_delta_int8",
        "rtt_ms",
        "channel_mb_s",
    },
    "pipeline": {
        "speedup_vs_sequential",
        "speedup_vs_fl",
        "server_idle_ratio_vs_fl",
        "pipeline_efficiency",
        "aps_vs_exhaustive_ratio",
        "prediction_error",
    },
    "dp": {
        "dp_overhead_ratio_fl",
        "dp_overhead_ratio_split",
        "dp_vs_opacus_ratio",
        "epsilon_abs_error_vs_independent_device",
        "epsilon_abs_error_vs_independent_full",
        "accuracy_at_eps",
    },
    "migration": {
        "time_saved_vs_restart_50",
        "time_saved_vs_restart_90",
        "migration_overhead_s",
        "overhead_vs_bound_ratio",
        "accuracy_delta_vs_no_move",
    },
    "fedadapt": {
        "round_time_ratio_agent_vs_fl",
        "round_time_ratio_exact_vs_fl",
        "straggler_time_ratio_vs_fl",
        "agent_vs_exact_ratio",
        "accuracy_delta_vs_fl",
        "prediction_error",
    },
    "pruning": {
        "size_reduction_vs_sparse_max",
        "latency_speedup_vs_sparse_max",
        "surgery_max_abs_diff",
        "switch_ms",
        "switch_vs_reload_ratio",
        "portfolio_vs_retrain_time_ratio",
    },
    "failover": {
        "requests_lost",
        "selection_ms",
        "accuracy_estimation_error",
        "latency_estimation_error",
        "downtime_s_repartition",
        "downtime_s_early_exit",
        "downtime_s_skip",
    },
    "adaptive": {"repartition_gain_ratio"},
    "models": {
        "models_covered",
        "models_split_exact",
        "models_surgery_silently_wrong",
        "split_merge_max_abs_diff",
        "split_training_max_abs_diff",
        "surgery_max_abs_diff",
    },
    "testbed": {"emulation_vs_kernel_round_time_ratio", "faults_injected", "faults_survived", "requests_lost"},
    "security": {
        "attacks_tried",
        "attacks_rejected",
        "model_replaced",
        "legit_session_max_abs_diff",
        "legit_availability",
        "memory_growth_mb",
        "node_readmitted",
    },
}
"""The figures each benchmark's issue asks for, by name."""


def test_every_benchmark_has_its_required_figures_listed():
    assert sorted(REQUIRED_FIGURES) == BENCHMARKS


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
    assert result["machine"]["cores"] and REQUIRED_FIGURES[name] <= set(result["figures"])
    assert list(tmp_path.glob(f"{name}*.png"))


def test_committed_full_results_follow_the_contract():
    for path in (ROOT / "results").glob("*.json"):
        if path.name.endswith(".quick.json"):
            continue
        result = json.loads(path.read_text())
        assert result["benchmark"] == path.stem and result["quick"] is False, path
        assert REQUIRED_FIGURES[path.stem] <= set(result["figures"]), (
            path,
            REQUIRED_FIGURES[path.stem] - set(result["figures"]),
        )
