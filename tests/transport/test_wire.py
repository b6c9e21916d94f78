"""Wire formats of the training stream: error bounds of each format, malformed quantised frames, the open's field."""

from __future__ import annotations

import math

import pytest
import torch

from edgeflower.config import AppConfig, ConfigError
from edgeflower.models.splittable import ModelSpec
from edgeflower.transport import InvalidMessageError, Limits, decode_frame, encode_frame
from edgeflower.transport.messages import OpenRequest, OptimizerSettings, StepRequest, StepResult
from edgeflower.transport.wire import (
    WIRE_DTYPES,
    WireForm,
    decode_wire,
    encode_wire,
    wire_nbytes,
    wire_roundtrip,
)


def _activations(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.randn(8, 4, 5, 5)
    return x * torch.tensor([0.01, 1.0, 30.0, 500.0]).reshape(1, 4, 1, 1)  # channels of very different magnitude


@pytest.mark.parametrize("wire", WIRE_DTYPES)
def test_every_wire_format_round_trips_within_its_error_bound(wire: str) -> None:
    x = _activations()
    got = decode_frame(StepRequest(x, torch.zeros(8, dtype=torch.long), 0, batch_size=8, wire=wire).to_bytes())
    y = StepRequest.from_frame(got).activations
    assert y.shape == x.shape and y.dtype == torch.float32
    err = (y - x).abs()
    if wire == "float32":
        assert torch.equal(y, x)
    elif wire == "bfloat16":
        assert bool((err <= x.abs() * 2**-8).all())
    elif wire == "float16":
        assert bool((err <= x.abs() * 2**-11 + 2**-24).all())  # subnormals: absolute half-ulp
    elif wire == "int8":
        assert float(err.max()) <= float(x.abs().max()) / 127 / 2 * (1 + 1e-5)
    else:  # one scale per channel: each channel's error is bounded by its own range
        for c in range(x.shape[1]):
            bound = float(x[:, c].abs().max()) / 127 / 2 * (1 + 1e-5)
            assert float(err[:, c].max()) <= bound, c


@pytest.mark.parametrize("wire", WIRE_DTYPES)
def test_a_step_built_from_an_encoded_form_is_the_frame_of_the_tensor_itself(wire: str) -> None:
    x, labels = _activations(), torch.zeros(8, dtype=torch.long)
    direct = StepRequest(x, labels, 2, batch_size=8, wire=wire).to_bytes()
    from_form = StepRequest(WireForm.of(x, wire), labels, 2, batch_size=8, wire=wire).to_bytes()
    assert from_form == direct
    assert WireForm.of(x, wire).shape == x.shape


def test_a_form_encoded_in_another_format_than_the_steps_is_refused() -> None:
    form = WireForm.of(_activations(), "int8")
    with pytest.raises(InvalidMessageError, match="encoded as int8 in a bfloat16 step"):
        StepRequest(form, torch.zeros(8, dtype=torch.long), 0, batch_size=8, wire="bfloat16").to_bytes()


def test_per_channel_scales_keep_small_channels_that_a_single_scale_crushes() -> None:
    x = _activations()
    small = x[:, 0]
    per_tensor = (wire_roundtrip(x, "int8")[:, 0] - small).abs().max()
    per_channel = (wire_roundtrip(x, "int8-channel")[:, 0] - small).abs().max()
    assert float(per_channel) < float(per_tensor) / 100


def test_gradients_come_down_in_the_requests_format() -> None:
    g = _activations(1)
    result = StepResult(3, 0, 0.5, True, 0.01, 0.005, g, wire="int8")
    back = StepResult.from_frame(decode_frame(result.to_bytes()))
    assert back.wire == "int8" and back.batch == 3 and back.grad is not None
    assert float((back.grad - g).abs().max()) <= float(g.abs().max()) / 254 * (1 + 1e-5)
    assert StepResult.from_frame(decode_frame(StepResult(0, 0, 0.1, True, 0, 0, None, "int8").to_bytes())).grad is None


def test_wire_bytes_count_the_compressed_payload_and_its_scales() -> None:
    x = torch.zeros(2, 3, 4, 4)
    assert wire_nbytes(x, "float32") == 96 * 4
    assert wire_nbytes(x, "bfloat16") == wire_nbytes(x, "float16") == 96 * 2
    assert wire_nbytes(x, "int8") == 96 + 4
    assert wire_nbytes(x, "int8-channel") == 96 + 3 * 4
    assert wire_nbytes(torch.zeros(5, dtype=torch.long), "int8") == 40  # labels travel as they are
    assert wire_nbytes(None, "int8") == 0
    labels = torch.zeros(2, dtype=torch.long)
    sizes = {w: len(StepRequest(x, labels, 0, batch_size=2, wire=w).to_bytes()) for w in ("float32", "int8")}
    assert sizes["float32"] - sizes["int8"] >= 96 * 3 - 4 - 100  # payload saved, less the scale and a longer header


@pytest.mark.parametrize("wire", ["int8", "int8-channel"])
def test_all_zero_and_subnormal_tensors_quantise_with_a_positive_scale(wire: str) -> None:
    for x in (torch.zeros(2, 3), torch.full((2, 3), 1e-44)):
        tensors = encode_wire("a", x, wire)
        assert bool((tensors["a-scale"] > 0).all())
        assert float((decode_wire(tensors, "a", wire) - x).abs().max()) <= 1e-44


def _step_frame(tensors: dict[str, torch.Tensor], wire: str = "int8") -> bytes:
    meta = {"batch": 0, "micro": 0, "num_micro": 1, "batch_size": 2, "wire": wire}
    return encode_frame("step", meta, {**tensors, "labels": torch.zeros(2, dtype=torch.long)})


Q = torch.ones(2, 3, dtype=torch.int8)


@pytest.mark.parametrize(
    ("tensors", "wire", "match"),
    [
        ({"activations": Q, "activations-scale": torch.tensor(math.nan)}, "int8", "scale .* finite"),
        ({"activations": Q, "activations-scale": torch.tensor(math.inf)}, "int8", "scale .* finite"),
        ({"activations": Q, "activations-scale": torch.tensor(0.0)}, "int8", "scale .* finite"),
        ({"activations": Q, "activations-scale": torch.tensor(-1.0)}, "int8", "scale .* finite"),
        ({"activations": Q, "activations-scale": torch.tensor(1e38)}, "int8", "scale .* finite"),
        ({"activations": Q, "activations-scale": torch.ones(3)}, "int8", r"float32\[\]"),
        ({"activations": Q, "activations-scale": torch.ones(2)}, "int8-channel", r"float32\[3\]"),
        ({"activations": Q, "activations-scale": torch.tensor(1, dtype=torch.float16)}, "int8", "float32"),
        ({"activations": Q}, "int8", "exactly"),
        ({"activations": Q.float(), "activations-scale": torch.tensor(1.0)}, "int8", "torch.int8"),
        ({"activations": torch.ones(2, 3)}, "bfloat16", "torch.bfloat16"),
        ({"activations": torch.ones(2, 3, dtype=torch.bfloat16)}, "int4", "not one of"),
        ({"activations": Q, "activations-scale": torch.tensor(1.0), "extra": Q}, "int8", "exactly"),
    ],
)
def test_malformed_quantised_steps_are_rejected_readably(tensors: dict, wire: str, match: str) -> None:
    frame = decode_frame(_step_frame(tensors, wire))
    with pytest.raises(InvalidMessageError, match=match):
        StepRequest.from_frame(frame)


def test_a_quantised_tensor_that_would_decode_over_the_limit_is_refused_before_allocation() -> None:
    big = torch.zeros(2, 3000, dtype=torch.int8)  # 6 kB on the wire, 24 kB as float32
    raw = _step_frame({"activations": big, "activations-scale": torch.tensor(1.0)})
    limits = Limits(max_message_bytes=16_000)
    frame = decode_frame(raw, limits)  # the frame itself fits
    with pytest.raises(InvalidMessageError, match="over the limit"):
        StepRequest.from_frame(frame, limits)


@pytest.mark.parametrize(
    ("x", "wire", "match"),
    [
        (torch.tensor([[1.0, math.nan]]), "int8", "NaN or Inf"),
        (torch.tensor([[-math.inf, 1.0]]), "int8", "NaN or Inf"),
        (torch.tensor([[[1.0], [math.nan]]]), "int8-channel", "NaN or Inf"),
        (torch.tensor([[1.0, math.inf]]), "bfloat16", "NaN or Inf"),
        (torch.tensor([[1.0, 1e6]]), "float16", "range"),
        (torch.ones(4), "int8-channel", "channel"),
    ],
)
def test_tensors_a_format_cannot_carry_are_refused_before_sending(x: torch.Tensor, wire: str, match: str) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        encode_wire("activations", x, wire)


def test_the_open_carries_the_wire_dtype_and_refuses_an_unknown_one() -> None:
    spec = ModelSpec("vgg5", (1, 28, 28), 10)
    req = OpenRequest("tok", spec, 3, OptimizerSettings(0.01), {}, wire_dtype="int8-channel")
    assert OpenRequest.from_frame(decode_frame(req.to_bytes())).wire_dtype == "int8-channel"
    default = decode_frame(OpenRequest("tok", spec, 3, OptimizerSettings(0.01), {}).to_bytes())
    assert "wire_dtype" not in default.meta and OpenRequest.from_frame(default).wire_dtype == "float32"
    bad = decode_frame(req.to_bytes())
    bad.meta["wire_dtype"] = "float8"
    with pytest.raises(InvalidMessageError, match="float8"):
        OpenRequest.from_frame(bad)


def test_the_run_config_refuses_an_unknown_wire_dtype_naming_the_key() -> None:
    assert AppConfig.from_run_config({"wire-dtype": "bfloat16"}).wire_dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"wire-dtype.*int4.*int8-channel"):
        AppConfig.from_run_config({"wire-dtype": "int4"})
