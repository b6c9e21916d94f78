"""An edge session's wire format: kept to as opened, float32 in a migration's state, adopted after a migration."""

from __future__ import annotations

import pytest
import torch

from edgeflower.edge.migration import export_session, import_session
from edgeflower.edge.session import TrainingSession
from edgeflower.models import build_model
from edgeflower.transport import InvalidMessageError, Limits, TokenVerifier, decode_frame
from edgeflower.transport.messages import OptimizerSettings, StepRequest
from tests._edge_helpers import SECRET, training_session
from tests._edge_helpers import token as helper_token


def _session(wire: str) -> tuple[TrainingSession, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("vgg5", width=0.25)
    head, tail = model.split(3)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with torch.no_grad():
        act = head(x)
    return training_session(model, 3, tail.state_dict(), wire=wire, optim=OptimizerSettings(0.05, 0.9)), act, y


def _step(act: torch.Tensor, y: torch.Tensor, batch: int, wire: str) -> StepRequest:
    raw = StepRequest(act, y, batch, batch_size=len(y), wire=wire).to_bytes()
    return StepRequest.from_frame(decode_frame(raw))


def test_a_session_answers_in_its_wire_format_and_refuses_another() -> None:
    session, act, y = _session("int8-channel")
    result = session.step(_step(act, y, 0, "int8-channel"))
    assert result.wire == "int8-channel" and result.grad is not None and result.grad.dtype == torch.float32
    with pytest.raises(InvalidMessageError, match="opened with wire dtype int8-channel"):
        session.step(_step(act, y, 1, "float32"))


def test_a_migrated_state_is_float32_and_the_resumed_session_follows_the_steps_format() -> None:
    session, act, y = _session("int8")
    session.step(_step(act, y, 0, "int8"))
    state = export_session(session, Limits())
    frame = decode_frame(state)
    assert "wire" not in frame.meta and "wire_dtype" not in frame.meta
    assert {t.dtype for t in frame.tensors.values() if t.is_floating_point()} == {torch.float32}
    token = helper_token(role="migration")  # the same (run, node, round) as the exported session
    moved = import_session("s2", TokenVerifier(SECRET).verify(token), token, state, Limits())
    assert moved.wire_dtype is None
    result = moved.step(_step(act, y, 1, "bfloat16"))  # a destination client of another default still trains
    assert result.wire == "bfloat16" and result.batch == 1
