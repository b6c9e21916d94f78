"""What split training charges the emulated link: the modelled transfer time or the real one, whichever is longer,
never both (on a manual clock and a scripted edge session, so the test decides on the rule, not on this machine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from edgeflower.device.split import SplitTrainer
from edgeflower.models import build_model
from edgeflower.transport import OptimizerSettings
from edgeflower.transport.emulation import EmulatedLink, LinkProfile
from edgeflower.transport.messages import StepResult
from tests.transport.test_emulation import ManualClock

OPT = OptimizerSettings(lr=0.01, momentum=0.0)
MBPS = 8.0  # 1 byte = 1 microsecond on the wire


class ScriptedSession:
    """An edge session whose step really takes ``real_s`` (on the manual clock), ``server_s`` of it on the server."""

    def __init__(self, clock: ManualClock, tail: dict[str, torch.Tensor], real_s: float, server_s: float) -> None:
        self.clock, self.tail, self.real_s, self.server_s = clock, tail, real_s, server_s
        self.steps: list[float] = []  # when each step was handed over

    def step(self, act: torch.Tensor, labels: torch.Tensor, *, batch: int, batch_size: int) -> StepResult:
        self.steps.append(self.clock.now())
        self.clock.sleep(self.real_s)
        return StepResult(batch, 0, 1.0, True, self.server_s, self.server_s, torch.zeros_like(act))

    def close(self) -> tuple[dict[str, torch.Tensor], SimpleNamespace]:
        return self.tail, SimpleNamespace(batches=1)

    def abort(self) -> None:
        pass


def _one_batch(real_s: float, server_s: float) -> tuple[ManualClock, ScriptedSession, dict[str, int]]:
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group", width=0.25)
    clock = ManualClock()
    trainer = SplitTrainer(model, 3, OPT, link=EmulatedLink(LinkProfile(MBPS, MBPS), clock=clock))
    tail = {k: v.clone() for k, v in trainer.tail.state_dict().items()}
    session = ScriptedSession(clock, tail, real_s, server_s)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    trainer.train([(x, y)], lambda k, state, opt: session)
    sizes = {
        "tail": sum(v.numel() * v.element_size() for v in tail.values()),
        "act": 16 * 16 * 14 * 14 * 4 + 16 * 8,  # conv2's output of 16 samples + int64 labels
        "grad": 16 * 16 * 14 * 14 * 4,
    }
    return clock, session, sizes


def test_a_step_is_charged_the_modelled_round_trip_with_the_real_transport_inside_it():
    # the real step (loopback transfers both ways + 10 ms on the server) takes 50 ms, less than the modelled
    # 10 ms + the gradient's 0.2 s on the wire: the device gets the gradient when the modelled link delivers it
    clock, session, size = _one_batch(real_s=0.05, server_s=0.01)
    t0 = 100.0
    (handed,) = session.steps
    assert handed == pytest.approx(t0 + (size["tail"] + size["act"]) / 1e6)  # tail up at open, then activations
    after_step = handed + 0.01 + size["grad"] / 1e6  # not handed + 0.05 + grad: the real 40 ms are inside
    assert clock.now() == pytest.approx(after_step + size["tail"] / 1e6)  # + the trained tail down at close


def test_a_step_whose_real_time_exceeds_the_modelled_time_is_not_charged_again():
    # a slow real step (a loaded machine): 0.5 s, longer than the modelled 10 ms + 0.2 s; the downlink adds nothing
    clock, session, size = _one_batch(real_s=0.5, server_s=0.01)
    (handed,) = session.steps
    assert clock.now() == pytest.approx(handed + 0.5 + size["tail"] / 1e6)
    assert clock.sleeps.count(0.5) == 1 and len(clock.sleeps) == 4  # tail up, activations up, the step, tail down
