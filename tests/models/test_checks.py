"""The public split checks work as their docstring shows, and refuse state dicts that do not match."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch

from edgeflower.models import checks, splittable


def test_the_checks_docstring_example_runs_as_written() -> None:
    result = doctest.testmod(checks, raise_on_error=True)
    assert result.attempted >= 4


def test_state_gap_names_the_keys_that_differ() -> None:
    with pytest.raises(KeyError, match="bias"):
        checks.state_gap({"w": torch.zeros(1)}, {"w": torch.zeros(1), "bias": torch.zeros(1)})


def test_the_training_check_sees_a_model_that_trains_differently() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight.add_(0.1)  # not the module the split model was made from
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))]
    assert (
        checks.split_training_gap(copy.deepcopy(net), splittable(copy.deepcopy(net), batches[0][0]), batches, 1) <= 1e-6
    )
    assert checks.split_training_gap(other, splittable(copy.deepcopy(net), batches[0][0]), batches, 1) > 1e-2
