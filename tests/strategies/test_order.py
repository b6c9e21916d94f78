"""EdgeStrategy aggregates replies in node order, so arrival order cannot change the global model's bits."""

from __future__ import annotations

import itertools
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from edgeflower.strategies.edge import NODE_RECORD, EdgeStrategy, in_node_order


def _reply(node: int, partition: int, state: dict[str, torch.Tensor], examples: int) -> Message:
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
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord({"num-examples": examples}),
            NODE_RECORD: ConfigRecord({"partition-id": partition}),
        }
    )
    return Message(content=content, metadata=metadata)


def _replies() -> list[Message]:
    gen = torch.Generator().manual_seed(0)
    # values of very different magnitudes: a float32 sum of them depends on its order
    scales = [1e4, 1e-3, 3.0, 7e-2]
    return [
        _reply(node=900 - 100 * i, partition=i, state={"w": torch.randn(256, generator=gen) * s}, examples=13 + i)
        for i, s in enumerate(scales)
    ]


def test_replies_are_ordered_by_partition_id_not_node_id_or_arrival():
    replies = _replies()
    for perm in itertools.permutations(replies):
        ordered = in_node_order(perm)
        assert [m.metadata.src_node_id for m in ordered] == [900, 800, 700, 600]


def test_aggregate_is_bitwise_identical_for_every_arrival_order():
    replies = _replies()
    models = set()
    for perm in itertools.permutations(replies):
        arrays, _ = EdgeStrategy(FedAvg()).aggregate_train(1, list(perm))
        assert arrays is not None
        models.add(arrays.to_torch_state_dict()["w"].numpy().tobytes())
    assert len(models) == 1
    # plain FedAvg sums in arrival order: the orders really do give different bits
    plain = set()
    for perm in itertools.permutations(replies):
        arrays, _ = FedAvg().aggregate_train(1, list(perm))
        assert arrays is not None
        plain.add(arrays.to_torch_state_dict()["w"].numpy().tobytes())
    assert len(plain) > 1
