"""The device side's open request: ``EdgeClient.open_session(..., dp=...)`` puts the tail's DP-SGD parameters in the
``open`` frame, and without ``dp`` the frame carries none (the edge server then trains the tail without DP)."""

from __future__ import annotations

from typing import Any

import pytest

from edgeflower.models import build_model
from edgeflower.transport.client import EdgeClient, SessionHandle
from edgeflower.transport.codec import decode_frame
from edgeflower.transport.messages import DPParams, OpenReply, OpenRequest, OptimizerSettings
from edgeflower.transport.service import METHOD_OPEN

TAIL_DP = DPParams(noise_multiplier=1.1, max_grad_norm=0.7, expected_batch_size=16, sample_rate=0.05, delta=1e-5)


def _capture_open(client: EdgeClient, sent: list[Any]) -> None:
    """Answer the client's ``Open`` locally (no server): record the decoded request, reply with a session."""

    def call_retrying(method: str, frame: bytes, timeout_s: float | None = None) -> Any:
        sent.append((method, decode_frame(frame, client.limits)))
        return decode_frame(OpenReply("session-1", "edge-a", (8, 14, 14), True).to_bytes())

    client.call_retrying = call_retrying  # type: ignore[method-assign]


@pytest.mark.parametrize("dp", [TAIL_DP, None], ids=["dp-full", "no-dp"])
def test_open_session_sends_the_tails_dp_parameters_only_when_given(dp: DPParams | None) -> None:
    model = build_model("vgg5", width=0.25)
    sent: list[Any] = []
    with EdgeClient("127.0.0.1:9") as client:  # never connects: the channel is lazy and Open is answered locally
        _capture_open(client, sent)
        handle = client.open_session(
            "tok", model.spec, 2, model.split(2)[1].state_dict(), OptimizerSettings(0.1), dp=dp
        )
    [(method, frame)] = sent
    assert method == METHOD_OPEN
    assert ("dp" in frame.meta) == (dp is not None)
    request = OpenRequest.from_frame(frame)
    assert request.dp == dp
    assert (request.token, request.split_point) == ("tok", 2)
    assert isinstance(handle, SessionHandle)
    assert (handle.session_id, handle.token, handle.client, handle.last_batch) == ("session-1", "tok", client, -1)
