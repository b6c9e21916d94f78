"""PruningStrategy prunes the aggregated global model on its schedule and keeps the masks."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from edgeflower.pruning import PruningStrategy


def _replies(states: list[dict[str, torch.Tensor]]) -> list[Message]:
    out = []
    for node, state in enumerate(states, start=1):
        metadata = Metadata(
            run_id=1,
            message_id=f"m{node}",
            src_node_id=node,
            dst_node_id=0,
            reply_to_message_id=f"q{node}",
            group_id="1",
            created_at=time.time(),
            ttl=60.0,
            message_type="train",
        )
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": 10})})
        out.append(Message(content=content, metadata=metadata))
    return out


def _states(gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "conv.weight": torch.randn(8, 4, 3, 3, generator=gen),
            "conv.bias": torch.randn(8, generator=gen),
            "fc.weight": torch.randn(10, 8, generator=gen),
        }
        for _ in range(3)
    ]


def test_pruning_strategy_prunes_on_schedule_and_keeps_masks_across_rounds() -> None:
    gen = torch.Generator().manual_seed(0)
    strategy = PruningStrategy(FedAvg(), schedule={2: 0.5, 3: 0.75})
    arrays, metrics = strategy.aggregate_train(1, _replies(_states(gen)))
    assert metrics is not None and "pruning-sparsity" not in metrics
    assert float((arrays.to_torch_state_dict()["conv.weight"] == 0).float().mean()) == 0.0

    arrays, metrics = strategy.aggregate_train(2, _replies(_states(gen)))
    state = arrays.to_torch_state_dict()
    assert metrics["pruning-sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert float((state["conv.weight"] == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert not bool((state["fc.weight"] == 0).any())  # linear weights are not pruned by default
    assert not bool((state["conv.bias"] == 0).any())
    mask2 = strategy.masks["conv.weight"].clone()

    arrays, metrics = strategy.aggregate_train(3, _replies(_states(gen)))
    mask3 = strategy.masks["conv.weight"]
    assert metrics["pruning-sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert not bool((mask3 & ~mask2).any())  # nested: a pruned weight stays pruned

    arrays, metrics = strategy.aggregate_train(4, _replies(_states(gen)))  # clients trained densely again
    state = arrays.to_torch_state_dict()
    assert bool((state["conv.weight"][~mask3] == 0).all())
    assert metrics["pruning-sparsity"] == pytest.approx(0.75, abs=1e-3)


def test_pruning_strategy_rejects_a_decreasing_schedule() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        PruningStrategy(FedAvg(), schedule={1: 0.8, 2: 0.5})
