"""A round's summary and the run's outcome (issue 16): fallbacks counted by edge server and cause, failed nodes
quoted, and the run fails when a round gets no result or when more than ``max-failed-fraction`` of it fails."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgeflower.strategies.edge import RoundOutcome, RunFailedError, failure_reason


def test_fallbacks_are_summarised_by_edge_server_and_cause():
    outcome = RoundOutcome(
        3, 4, fell_back=[(1, "127.0.0.1:50001", "unreachable"), (2, "127.0.0.1:50001", "unreachable")]
    )
    assert outcome.fallback_summary() == "fell-back 2 of 4 nodes: edge 127.0.0.1:50001 unreachable (2 nodes)"
    outcome.fell_back.append((3, "127.0.0.1:50002", "timed out"))
    assert outcome.fallback_summary().endswith("unreachable (2 nodes); edge 127.0.0.1:50002 timed out")
    outcome.check(0.5)  # falling back is not failing


def test_a_round_without_any_result_fails_the_run_quoting_the_first_failures():
    failures = [(n, f"split training failed: cannot build model 'mycnn' ({n})") for n in range(5)]
    with pytest.raises(RunFailedError) as info:
        RoundOutcome(1, 5, failures).check(0.9)
    message = str(info.value)
    assert message.startswith("round 1 got no result: 5 of 5 nodes failed: node 0: split training failed")
    assert "node 2:" in message and "node 3:" not in message and "(and 2 more)" in message


@pytest.mark.parametrize(("failed", "fraction", "fails"), [(2, 0.5, False), (3, 0.5, True), (1, 0.0, True)])
def test_the_run_fails_when_more_than_max_failed_fraction_of_the_nodes_fail(failed, fraction, fails):
    outcome = RoundOutcome(2, 4, [(n, "boom") for n in range(failed)])
    if fails:
        with pytest.raises(RunFailedError, match=rf"more than max-failed-fraction = {fraction:g}"):
            outcome.check(fraction)
    else:
        outcome.check(fraction)


def test_no_node_sampled_is_a_round_without_result():
    with pytest.raises(RunFailedError, match="round 1 got no result: no node was sampled"):
        RoundOutcome(1, 0).check(0.5)


def test_failure_reason_unwraps_flowers_client_app_exception():
    wrapped = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() ...\n"
        "Traceback ...\nException ClientAppException occurred. Message: split training failed: edge server "
        "127.0.0.1:5: INVALID_ARGUMENT: cannot build model 'mycnn''>"
    )
    msg = SimpleNamespace(error=SimpleNamespace(reason=wrapped, code=2))
    assert failure_reason(msg) == (
        "split training failed: edge server 127.0.0.1:5: INVALID_ARGUMENT: cannot build model 'mycnn'"
    )
    assert failure_reason(SimpleNamespace(error=SimpleNamespace(reason="", code=3))) == "error code 3"
