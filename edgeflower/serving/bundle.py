"""A serving bundle: everything the controller needs to serve and fail over, in one directory.

``bundle.json`` holds the model spec (or a pruned variant's architecture), the partition ``cuts``, the exit
boundaries with their input shapes, the block profile (forward seconds at the serving batch size, activation bytes
and shapes) and the validation accuracy table of every failover option. ``weights.pt`` holds tensors only (model
state under ``model.``, exit heads under ``exit.<boundary>.``), written with ``torch.save`` and read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeflower.data.datasets import ImageData
from edgeflower.models.splittable import ModelSpec, SplittableModel
from edgeflower.models.zoo import build_model
from edgeflower.serving.estimators import accuracy_table, block_times, out_shapes
from edgeflower.serving.exits import ExitHead, train_exit_heads
from edgeflower.serving.plan import check_cuts

__all__ = ["ServingBundle", "build_bundle"]


@dataclass
class ServingBundle:
    """A model ready to serve over a chain, with exit heads and failover estimates."""

    model: SplittableModel
    cuts: tuple[int, ...]
    exits: dict[int, ExitHead]
    block_s: list[float]
    batch_size: int
    accuracy: dict[str, float]
    arch: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        """The model's spec."""
        return self.model.spec

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Per-sample output shape of every block."""
        return out_shapes(self.model)

    def save(self, root: str | Path) -> Path:
        """Write ``bundle.json`` and ``weights.pt`` under ``root``; return ``root``."""
        out = Path(root)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for b, head in self.exits.items():
            tensors.update({f"exit.{b}.{k}": v for k, v in head.state_dict().items()})
        torch.save(tensors, out / "weights.pt")
        info = {
            "format": 1,
            "spec": self.spec.to_dict(),
            "arch": self.arch,
            "cuts": list(self.cuts),
            "exits": {str(b): list(h.in_shape) for b, h in self.exits.items()},
            "block_s": self.block_s,
            "batch_size": self.batch_size,
            "accuracy": self.accuracy,
            "meta": self.meta,
        }
        (out / "bundle.json").write_text(json.dumps(info, indent=2))
        return out

    @classmethod
    def load(cls, root: str | Path) -> ServingBundle:
        """Read a bundle written by :meth:`save` (tensors only, ``weights_only=True``).

        Raises
        ------
        ValueError
            Naming the bundle and what is wrong: a missing or unreadable file, a malformed ``bundle.json`` (a
            missing key, a wrong type), weights that are no tensor file or do not fit the model.
        """
        path = Path(root)
        try:
            info = json.loads((path / "bundle.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a serving bundle: {exc}") from exc
        try:
            tensors = torch.load(path / "weights.pt", weights_only=True, map_location="cpu")
        except Exception as exc:  # torch's tensor-only loader raises a different class per kind of damage
            raise ValueError(f"{path} is not a serving bundle: weights.pt is no tensor file: {exc}") from exc
        try:
            return cls._from(info, tensors)
        except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as exc:
            what = f"lacks {exc}" if isinstance(exc, KeyError) else f"does not fit: {exc}"
            raise ValueError(f"{path} is not a serving bundle: bundle.json or weights.pt {what}") from exc

    @classmethod
    def _from(cls, info: dict, tensors: dict[str, torch.Tensor]) -> ServingBundle:
        if not isinstance(info, dict) or not isinstance(tensors, dict):
            raise TypeError("bundle.json must hold an object and weights.pt a dict of tensors")
        if info.get("arch"):
            from edgeflower.pruning.arch import build_from_arch

            model = build_from_arch(info["arch"])
        else:
            model = build_model(ModelSpec.from_dict(info["spec"]))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        model.eval()
        exits = {}
        for b, shape in info["exits"].items():
            head = ExitHead(shape, model.spec.num_classes)
            prefix = f"exit.{b}."
            head.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            exits[int(b)] = head.eval()
        return cls(
            model,
            check_cuts(info["cuts"], model.num_blocks),
            exits,
            [float(v) for v in info["block_s"]],
            int(info["batch_size"]),
            {str(k): float(v) for k, v in info["accuracy"].items()},
            info.get("arch"),
            dict(info.get("meta", {})),
        )


def build_bundle(
    model: SplittableModel,
    cuts: Sequence[int],
    train: ImageData,
    val: ImageData,
    batch_size: int = 32,
    exit_epochs: int = 8,
    arch: dict[str, Any] | None = None,
) -> ServingBundle:
    """Train exit heads at the interior cuts (backbone frozen), profile blocks and the failover accuracy table.

    Parameters
    ----------
    model : SplittableModel
        The trained model (a zoo model or a portfolio variant; pass its ``arch`` for the latter).
    cuts : sequence of int
        The partition over the nodes.
    train, val : ImageData
        Data for the exit heads and for the accuracy estimates.
    batch_size : int
        Serving batch size the block times are measured at.
    """
    model.eval()
    c = check_cuts(cuts, model.num_blocks)
    exits = train_exit_heads(model, train, c[1:-1], epochs=exit_epochs)
    table = accuracy_table(model, exits, c, val)
    return ServingBundle(model, c, exits, block_times(model, batch_size), batch_size, table, arch)
