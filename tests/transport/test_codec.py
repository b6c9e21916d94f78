"""The tensor codec round-trips every allowed dtype and rejects every malformed frame; no pickle anywhere."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch

from edgeflower.transport import DTYPES, InvalidMessageError, Limits, MessageTooLargeError, decode_frame, encode_frame
from edgeflower.transport.messages import OptimizerSettings, StepRequest, end_frame, ends_before_migration

ROOT = Path(__file__).resolve().parents[2]


def _frame(header: object, payload: bytes = b"", magic: bytes = b"EFLW", version: int = 1) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<4sB3sI", magic, version, b"\0\0\0", len(raw)) + raw + payload


def _header(dtype: str = "float32", shape: list | None = None) -> dict:
    return {"kind": "t", "meta": {}, "tensors": [{"name": "a", "dtype": dtype, "shape": shape or [2]}]}


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_every_allowed_dtype_round_trips_bit_exactly(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    full = (torch.randn(3, 4, 5) * 100).to(dtype) if dtype != torch.bool else torch.rand(3, 4, 5) > 0.5
    tensors = {"x": full, "scalar": full.reshape(-1)[0].clone(), "empty": full[:0], "strided": full.transpose(0, 2)}
    frame = decode_frame(encode_frame("k", {"a": 1, "b": [1.5, "x"]}, tensors))
    assert frame.kind == "k" and frame.meta == {"a": 1, "b": [1.5, "x"]}
    assert list(frame.tensors) == list(tensors)
    for name, tensor in tensors.items():
        got = frame.tensors[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got, tensor)


def test_decoded_tensors_own_writable_memory() -> None:
    data = bytearray(encode_frame("k", None, {"x": torch.ones(4)}))
    x = decode_frame(data).tensors["x"]
    data[-4:] = b"\0\0\0\0"
    x.add_(1)
    assert torch.equal(x, torch.full((4,), 2.0))


def test_disallowed_dtype_cannot_be_encoded() -> None:
    with pytest.raises(InvalidMessageError, match="float64"):
        encode_frame("k", None, {"x": torch.zeros(2, dtype=torch.float64)})


@pytest.mark.parametrize(
    "frame,match",
    [
        (b"EFL", "shorter than"),
        (_frame(_header(), bytes(8), magic=b"PKL\x80"), "bad magic"),
        (_frame(_header(), bytes(8), version=2), "version"),
        (_frame(b"\xff\xfe not json"), "not valid UTF-8 JSON"),
        (_frame(["a", "list"]), "exactly the keys"),
        (_frame({**_header(), "extra": 1}, bytes(8)), "exactly the keys"),
        (_frame(_header("float64"), bytes(16)), "dtype 'float64' not allowed"),
        (_frame(_header("object"), bytes(16)), "not allowed"),
        (_frame(_header(shape=[1] * 9), bytes(4)), "at most 8 dims"),
        (_frame(_header(shape=[-2]), b""), "invalid dimension -2"),
        (_frame(_header(shape=[2.5]), b""), "invalid dimension"),
        (_frame(_header(shape="2"), b""), "shape must be a list"),
        (_frame(_header(), bytes(7)), "needs 8 bytes, only 7 left"),
        (_frame(_header(), bytes(9)), "1 unexpected bytes"),
        (_frame(_header("bool", [2]), b"\x01\x07"), "bool payload"),
        (
            _frame({"kind": "t", "meta": {}, "tensors": [{"name": "a", "dtype": "uint8", "shape": [1]}] * 2}, b"ab"),
            "duplicate",
        ),
        (_frame({"kind": "t", "meta": {}, "tensors": [{"name": "a", "dtype": "uint8"}]}, b"a"), "exactly name"),
        (_frame(_header(shape=[2**30, 4]), b""), "needs 17179869184 bytes"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_frames_are_rejected(frame: bytes, match: str) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        decode_frame(frame)


def test_header_length_beyond_the_frame_is_rejected() -> None:
    frame = struct.pack("<4sB3sI", b"EFLW", 1, b"\0\0\0", 10**6) + b"{}"
    with pytest.raises(InvalidMessageError, match="header length"):
        decode_frame(frame)


def test_size_limits_are_enforced_on_both_sides() -> None:
    tensors = {"x": torch.zeros(1024)}
    frame = encode_frame("k", None, tensors)
    small = Limits(max_message_bytes=len(frame) - 1)
    with pytest.raises(MessageTooLargeError, match="larger than the limit"):
        decode_frame(frame, small)
    with pytest.raises(MessageTooLargeError, match="larger than the limit"):
        encode_frame("k", None, tensors, small)
    with pytest.raises(InvalidMessageError, match="tensors in one message"):
        decode_frame(encode_frame("k", None, {str(i): torch.zeros(1) for i in range(5)}), Limits(max_tensors=4))


def test_step_messages_validate_their_fields() -> None:
    step = StepRequest(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), batch=4, micro=1, num_micro=2, batch_size=4)
    parsed = StepRequest.from_frame(decode_frame(step.to_bytes()))
    assert (parsed.batch, parsed.micro, parsed.num_micro, parsed.batch_size) == (4, 1, 2, 4)
    bad = StepRequest(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), batch=0, micro=2, num_micro=2, batch_size=4)
    with pytest.raises(InvalidMessageError, match="'micro'"):
        StepRequest.from_frame(decode_frame(bad.to_bytes()))
    with pytest.raises(InvalidMessageError, match="expected a 'step' message"):
        StepRequest.from_frame(decode_frame(encode_frame("close")))


def test_an_end_frame_announces_a_migration_or_nothing_and_anything_else_is_refused() -> None:
    assert not ends_before_migration(decode_frame(end_frame()))
    assert ends_before_migration(decode_frame(end_frame(then_migrate=True)))
    for meta in ({"next": "elsewhere"}, {"next": 5}, {"next": "migrate", "also": 1}, {"then": "migrate"}):
        with pytest.raises(InvalidMessageError, match="an end frame carries nothing or"):
            ends_before_migration(decode_frame(encode_frame("end", meta)))
    with pytest.raises(InvalidMessageError, match="an end frame carries no tensors"):
        ends_before_migration(decode_frame(encode_frame("end", {"next": "migrate"}, {"junk": torch.zeros(1000)})))
    with pytest.raises(InvalidMessageError, match="expected a 'end' message"):
        ends_before_migration(decode_frame(encode_frame("step")))


@pytest.mark.parametrize(
    "kw", [{"lr": 0.0}, {"lr": float("nan")}, {"lr": 0.1, "momentum": 1.0}, {"lr": 0.1, "weight_decay": -1}]
)
def test_invalid_optimizer_settings_are_rejected(kw: dict) -> None:
    with pytest.raises(InvalidMessageError, match="optimizer"):
        OptimizerSettings(**kw)


def test_no_pickle_or_torch_load_in_the_offload_channel() -> None:
    sources = [*(ROOT / "edgeflower" / "transport").glob("*.py"), *(ROOT / "edgeflower" / "server").glob("*.py")]
    sources.append(ROOT / "edgeflower" / "commands" / "edge_server.py")
    pattern = re.compile(r"import (cloud)?pickle|pickle\.loads?\(|torch\.load\(|import dill|marshal\.loads\(")
    offenders = [str(p) for p in sources if pattern.search(p.read_text())]
    assert not offenders
