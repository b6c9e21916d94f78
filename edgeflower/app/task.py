"""What the ServerApp and ClientApp share: the node's data partition and the data/config error mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeflower.config import AppConfig, ConfigError
from edgeflower.data import BatchLoader, DataError, ImageData, load_dataset, partition

__all__ = ["load_partition", "load_test_set", "node_loader"]


def _load(cfg: AppConfig, train: bool) -> ImageData:
    try:
        return load_dataset(cfg.dataset, train=train, root=cfg.data_root or None)
    except DataError as exc:
        raise ConfigError("data-root", str(exc)) from exc


def load_test_set(cfg: AppConfig) -> ImageData:
    """The test split, cut to ``eval-samples`` when set."""
    data = _load(cfg, train=False)
    if cfg.eval_samples and cfg.eval_samples < len(data):
        data = data.subset(range(cfg.eval_samples))
    return data


def load_partition(cfg: AppConfig, node_config: Mapping[str, Any]) -> ImageData:
    """This node's partition of the training split, from ``partition-id`` and ``num-partitions``."""
    try:
        pid = int(node_config["partition-id"])
        num = int(node_config["num-partitions"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            "node-config", "each node needs integer 'partition-id' and 'num-partitions' in its node config"
        ) from exc
    if not 0 <= pid < num:
        raise ConfigError("node-config", f"partition-id {pid} is not in 0..{num - 1}")
    data = _load(cfg, train=True)
    parts = partition(data.y.numpy(), num, cfg.partitioner, cfg.dirichlet_alpha, cfg.seed)
    return data.subset(parts[pid])


def node_loader(cfg: AppConfig, data: ImageData, server_round: int, partition_id: int) -> BatchLoader:
    """The seeded batch loader of one node in one round."""
    return BatchLoader(
        data,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed * 1_000_003 + server_round * 1009 + partition_id * 7919,
        max_batches=cfg.max_batches or None,
    )
