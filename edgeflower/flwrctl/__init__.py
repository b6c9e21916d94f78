"""Non-interactive control of Flower 1.42 runs, in the Simulation Engine and on a loopback Deployment Engine.

Tests, ``make run`` and scripts start a run, follow it, read its final status and logs, and always stop every
process they started, with a project-local ``FLWR_HOME``:

* :func:`run_simulation` starts the local simulation SuperLink that ``flwr`` would start (``flower-superlink
  --simulation``, on a free port), submits the app to it, follows its log to the end, reads the final status and
  stops the SuperLink and everything it spawned (the ServerApp process, Ray).
* :class:`Deployment` starts a ``flower-superlink`` and N ``flower-supernode`` processes on loopback (each in its
  own process group) and runs apps on them.

Runs are submitted, followed and read through the SuperLink's Control API from this process
(:mod:`edgeflower.flwrctl.control`), with the requests ``flwr run``, ``flwr log`` and ``flwr ls`` send.

Command line (used by the Makefile)::

    python -m edgeflower.flwrctl run-sim . --num-supernodes 2 --run-config "num-rounds=3 lr=0.05"
    python -m edgeflower.flwrctl run-deploy . --num-supernodes 2

Both exit with status 0 only if the run ends in ``finished:completed``. Keep ``FLWR_HOME`` at ``<repo>/.flwr``
(the default): FAB building skips ``.flwr/**`` but would package the ``config.toml`` and extracted ``apps/`` of any
other Flower home inside the app directory.

Modules, one job each: :mod:`~edgeflower.flwrctl.outcome` (what a run ended as), :mod:`~edgeflower.flwrctl.home`
(the Flower home, its connections and environment), :mod:`~edgeflower.flwrctl.processes` (finding and stopping
Flower's processes), :mod:`~edgeflower.flwrctl.control` (the Control API client), :mod:`~edgeflower.flwrctl.runs`
(submit, follow, read back), :mod:`~edgeflower.flwrctl.checks` (run config checked before Flower is asked),
:mod:`~edgeflower.flwrctl.simulation`, :mod:`~edgeflower.flwrctl.deployment` and :mod:`~edgeflower.flwrctl.cli`.
"""

from __future__ import annotations

from edgeflower.flwrctl.checks import invalid_run_config, unknown_run_config_keys
from edgeflower.flwrctl.cli import build_parser, main
from edgeflower.flwrctl.control import ControlClient
from edgeflower.flwrctl.deployment import Deployment
from edgeflower.flwrctl.home import flower_env, format_config_overrides, free_port, write_connections
from edgeflower.flwrctl.outcome import STATUS_COMPLETED, FlwrCtlError, RunOutcome, drop_flower_noise, run_failures
from edgeflower.flwrctl.processes import find_local_superlinks, kill_process_tree, stop_local_superlink
from edgeflower.flwrctl.runs import fetch_logs, follow_run, get_run_status, start_run, wait_for_run
from edgeflower.flwrctl.simulation import (
    SIMULATION_RUNTIME_CRASH,
    run_simulation,
    runtime_crash_cause,
    runtime_crashed,
)

__all__ = [
    "SIMULATION_RUNTIME_CRASH",
    "STATUS_COMPLETED",
    "ControlClient",
    "Deployment",
    "FlwrCtlError",
    "RunOutcome",
    "build_parser",
    "drop_flower_noise",
    "fetch_logs",
    "find_local_superlinks",
    "flower_env",
    "follow_run",
    "format_config_overrides",
    "free_port",
    "get_run_status",
    "invalid_run_config",
    "kill_process_tree",
    "main",
    "run_failures",
    "run_simulation",
    "runtime_crash_cause",
    "runtime_crashed",
    "start_run",
    "stop_local_superlink",
    "unknown_run_config_keys",
    "wait_for_run",
    "write_connections",
]
