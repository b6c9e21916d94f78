"""Splittable models: an ordered list of blocks that can be cut at any block boundary.

A :class:`SplittableModel` keeps its blocks in ``self.blocks`` so every parameter's state-dict key starts with
``blocks.<index>.``. :meth:`SplittableModel.split` returns a head (blocks ``[:k]``) and a tail (blocks ``[k:]``)
as :class:`Segment` modules that keep the *original* block indices in their keys, so the union of the head's and
the tail's state dicts is exactly the full model's state dict.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ModelSpec", "Segment", "SplittableModel", "merge_state_dicts"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a zoo model (no pickle needed to describe it).

    Parameters
    ----------
    name : str
        Zoo name, e.g. ``"vgg5"``.
    in_shape : tuple of int
        Shape of one input sample ``(C, H, W)``.
    num_classes : int
        Number of output classes.
    norm : str
        ``"batch"``, ``"group"`` or ``"none"``.
    options : dict
        Extra keyword arguments of the model builder (e.g. ``{"width": 0.5}``).
    """

    name: str
    in_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    norm: str = "batch"
    options: Mapping[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable description."""
        return {
            "name": self.name,
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "norm": self.norm,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelSpec:
        """Rebuild a spec written by :meth:`to_dict`."""
        try:
            spec = cls(
                name=str(data["name"]),
                in_shape=tuple(int(v) for v in data["in_shape"]),  # type: ignore[arg-type, union-attr]
                num_classes=int(data["num_classes"]),  # type: ignore[arg-type]
                norm=str(data.get("norm", "batch")),
                options=dict(data.get("options", {})),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"invalid model spec {dict(data)!r:.300}: {exc}") from exc
        bad = [k for k, v in spec.options.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"invalid model spec: options {bad!r:.200} are not finite numbers")
        return spec


class Segment(nn.Module):
    """A contiguous run of blocks ``[start, stop)`` of a :class:`SplittableModel`.

    The blocks are stored under their original indices, so state-dict keys match the full model's.

    Parameters
    ----------
    blocks : sequence of nn.Module
        The blocks, in order.
    start : int
        Index of the first block in the full model.
    """

    def __init__(self, blocks: Sequence[nn.Module], start: int) -> None:
        super().__init__()
        self.start = start
        self.stop = start + len(blocks)
        self.blocks = nn.ModuleDict({str(start + i): b for i, b in enumerate(blocks)})

    def __len__(self) -> int:
        return self.stop - self.start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks in order (identity for an empty segment)."""
        for block in self.blocks.values():
            x = block(x)
        return x


class SplittableModel(nn.Module):
    """A model made of an ordered list of blocks with valid split points between them.

    Parameters
    ----------
    blocks : iterable of nn.Module
        The blocks; the output of block ``i`` is the input of block ``i + 1``.
    spec : ModelSpec
        The description used to build the model (kept for saving and for planners).
    block_names : sequence of str, optional
        Human-readable names of the blocks (``"conv1"``, ``"pool1"`` ...).
    """

    def __init__(
        self,
        blocks: Iterable[nn.Module],
        spec: ModelSpec,
        block_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.spec = spec
        names = list(block_names) if block_names is not None else [f"block{i}" for i in range(len(self.blocks))]
        if len(names) != len(self.blocks):
            raise ValueError("block_names must have one name per block")
        self.block_names = names

    @property
    def num_blocks(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    @property
    def split_points(self) -> list[int]:
        """Valid split points ``k``: the head keeps blocks ``[:k]``.

        ``0`` puts everything on the server, ``num_blocks`` everything on the device (classic FL).
        """
        return list(range(self.num_blocks + 1))

    def check_split_point(self, k: int) -> int:
        """Return ``k`` if it is a valid split point, else raise ``ValueError``."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0 or k > self.num_blocks:
            raise ValueError(
                f"split point {k!r} out of range for {self.spec.name}: valid values are 0..{self.num_blocks}"
            )
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run all blocks in order."""
        for block in self.blocks:
            x = block(x)
        return x

    def segment(self, start: int, stop: int, share: bool = False) -> Segment:
        """Blocks ``[start, stop)`` as a :class:`Segment` (a deep copy unless ``share``)."""
        self.check_split_point(start)
        self.check_split_point(stop)
        if start > stop:
            raise ValueError(f"segment start {start} is after stop {stop}")
        blocks = [self.blocks[i] for i in range(start, stop)]
        if not share:
            blocks = [copy.deepcopy(b) for b in blocks]
        return Segment(blocks, start)

    def split(self, k: int, share: bool = False) -> tuple[Segment, Segment]:
        """Cut the model at split point ``k``.

        Parameters
        ----------
        k : int
            Number of blocks on the device (the head).
        share : bool
            If true the segments share modules (and parameters) with this model; otherwise they are copies.

        Returns
        -------
        tuple of Segment
            ``(head, tail)`` with ``tail(head(x)) == self(x)``.
        """
        self.check_split_point(k)
        return self.segment(0, k, share), self.segment(k, self.num_blocks, share)

    def merge(self, *parts: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Load the union of the parts' state dicts (modules or state dicts) into this model, strictly."""
        self.load_state_dict(merge_state_dicts(*parts), strict=True)


def merge_state_dicts(*parts: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Union of state dicts of segments; raises ``ValueError`` when two parts define the same key."""
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        sd = part.state_dict() if isinstance(part, nn.Module) else part
        for key, value in sd.items():
            if key in merged:
                raise ValueError(f"state-dict key {key!r} appears in more than one part")
            merged[key] = value
    return merged
