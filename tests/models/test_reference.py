"""Models by import reference: one resolver builds zoo names and "package.module:callable" alike, everywhere."""

from __future__ import annotations

import pytest
import torch

from edgeflower.models import ModelSpec, build_model
from edgeflower.models.reference import ModelReferenceError, trust_reference, trusted_references

NET = "tests.models._user_model:Net"


def test_reference_builds_the_users_model_as_a_splittable_model_with_its_spec():
    torch.manual_seed(0)
    model = build_model(NET, (1, 28, 28), 10)
    assert model.spec == ModelSpec(NET, (1, 28, 28), 10)
    assert model.num_blocks >= 6
    x = torch.randn(3, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        full = model(x)
        for k in model.split_points:
            head, tail = model.split(k)
            assert torch.equal(tail(head(x)), full), k


def test_factory_receives_the_spec_values_it_names_and_the_options():
    model = build_model("tests.models._user_model:wide_net", (3, 16, 16), 7, width=5)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 7)
    assert model.spec.options == {"width": 5}
    assert sum(p.numel() for p in model.parameters()) == 3 * 5 * 9 + 5 + 5 * 7 + 7


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("tests.models._user_model:Missing", "has no attribute"),
        ("tests.models._no_such_module:Net", "cannot import module"),
        ("tests.models._user_model:NOT_A_FACTORY", "not a class or function"),
        ("tests.models._user_model:Net; rm -rf", "invalid model reference"),
        ("os:getcwd", "returned str, not an nn.Module"),
    ],
)
def test_bad_references_fail_loudly_naming_the_problem(ref, message):
    with pytest.raises(ValueError, match=message):
        build_model(ref, (1, 28, 28), 10)


def test_spec_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ValueError, match="does not accept inputs"):
        build_model(NET, (3, 32, 32), 10)  # quickstart's Net is for 1x28x28
    with pytest.raises(ValueError, match="the spec says 5 classes"):
        build_model(NET, (1, 28, 28), 5)


def test_peers_can_only_name_references_this_process_trusts():
    ref = "tests.models._user_model:wide_net"
    spec = ModelSpec(ref, (1, 8, 8), 3)
    if ref not in trusted_references():
        with pytest.raises(ModelReferenceError, match="not trusted"):
            build_model(spec, from_peer=True)
    with pytest.raises(ModelReferenceError, match="not trusted"):
        build_model(ModelSpec("os:getcwd", (1, 8, 8), 3), from_peer=True)  # never imported nor called
    trust_reference(ref)
    assert build_model(spec, from_peer=True).spec == spec
    with pytest.raises(ModelReferenceError, match="cannot import"):
        trust_reference("tests.models._typo:Net")  # a typo fails when the server starts


def test_run_config_accepts_a_reference_and_rejects_a_bad_one():
    from edgeflower.config import AppConfig, ConfigError

    cfg = AppConfig.from_run_config({"model": NET, "dataset": "fashion-mnist"})
    assert cfg.build_model().spec.name == NET
    assert NET in trusted_references()  # the run's own model: its in-process edge servers may build it
    with pytest.raises(ConfigError, match="model"):
        AppConfig.from_run_config({"model": "tests.models._user_model:Missing"})
