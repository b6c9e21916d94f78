"""Save and load a trained FedAdapt policy without pickle.

The file is ``torch.save`` of a flat dict of tensors: the actor/critic weights plus ``__header__``, a uint8 tensor
holding a JSON header (format version, model name, number of blocks, number of groups, number of choices per group,
state dimension, the sha256 of the weights, and free-form training information). Version 2 is the categorical agent
(one of ``num_blocks + 1`` split points per group, state ``STATE_FEATURES`` per group); version-1 files (the
Gaussian agent) are refused with a message to retrain. Loading uses ``torch.load(weights_only=True)`` and
checks everything: a corrupted, truncated, tampered or mismatched file raises :class:`PolicyError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeflower.planning.errors import PolicyError
from edgeflower.planning.ppo import ActorCritic
from edgeflower.planning.state import STATE_FEATURES

__all__ = ["POLICY_VERSION", "PolicyHeader", "load_policy", "save_policy", "weights_sha256"]

POLICY_VERSION = 2
HEADER_KEY = "__header__"


@dataclass(frozen=True)
class PolicyHeader:
    """What a policy was trained for."""

    model: str
    num_blocks: int
    num_groups: int
    state_dim: int
    num_choices: int = 0
    version: int = POLICY_VERSION
    sha256: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """JSON text of the header."""
        return json.dumps(
            {
                "format": "edgeflower-fedadapt-policy",
                "version": self.version,
                "model": self.model,
                "num_blocks": self.num_blocks,
                "num_groups": self.num_groups,
                "num_choices": self.num_choices,
                "state_dim": self.state_dim,
                "sha256": self.sha256,
                "info": self.info,
            },
            sort_keys=True,
        )


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (in sorted key order)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_policy(
    path: str | Path, net: ActorCritic, model: str, num_blocks: int, info: Mapping[str, Any] | None = None
) -> PolicyHeader:
    """Write ``net`` with its header to ``path``; return the header."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    header = PolicyHeader(
        model=model,
        num_blocks=int(num_blocks),
        num_groups=net.num_groups,
        state_dim=net.state_dim,
        num_choices=net.num_choices,
        sha256=weights_sha256(state),
        info=dict(info or {}),
    )
    raw = torch.tensor(list(header.to_json().encode()), dtype=torch.uint8)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({HEADER_KEY: raw, **state}, p)
    return header


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PolicyError(f"policy file {path} does not exist (train one with `edgeflower train-agent`)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbage/pickled files
        raise PolicyError(
            f"policy file {path} is corrupted or not a policy file: {type(exc).__name__}: {exc}"
        ) from None
    if (
        not isinstance(data, dict)
        or HEADER_KEY not in data
        or not all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise PolicyError(f"policy file {path} is not an edgeflower policy (no header or not a dict of tensors)")
    return data


def _header(path: Path, raw: torch.Tensor) -> PolicyHeader:
    try:
        meta = json.loads(bytes(raw.to(torch.uint8).tolist()).decode())
        if meta.get("format") != "edgeflower-fedadapt-policy":
            raise ValueError("unknown format")
        return PolicyHeader(
            model=str(meta["model"]),
            num_blocks=int(meta["num_blocks"]),
            num_groups=int(meta["num_groups"]),
            state_dim=int(meta["state_dim"]),
            num_choices=int(meta.get("num_choices", 0)),
            version=int(meta["version"]),
            sha256=str(meta["sha256"]),
            info=dict(meta.get("info", {})),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy file {path} has a corrupted header: {exc}") from None


def load_policy(
    path: str | Path,
    model: str | None = None,
    num_blocks: int | None = None,
    num_groups: int | None = None,
) -> tuple[ActorCritic, PolicyHeader]:
    """Load a policy and check it against what the caller will use it for.

    Parameters
    ----------
    path : str or Path
        File written by :func:`save_policy`.
    model, num_blocks, num_groups : optional
        Expected model name, number of blocks and number of groups; a mismatch raises :class:`PolicyError`.

    Returns
    -------
    (ActorCritic, PolicyHeader)
    """
    p = Path(path)
    data = _read(p)
    header = _header(p, data.pop(HEADER_KEY))
    if header.version != POLICY_VERSION:
        raise PolicyError(
            f"policy file {p} has format version {header.version}; this edgeflower reads {POLICY_VERSION} "
            "(retrain it with `edgeflower train-agent`)"
        )
    if weights_sha256(data) != header.sha256:
        raise PolicyError(f"policy file {p} is corrupted: its weights do not match the sha256 in its header")
    expected = {"model": model, "num_blocks": num_blocks, "num_groups": num_groups}
    for key, want in expected.items():
        got = getattr(header, key)
        if want is not None and got != want:
            raise PolicyError(f"policy file {p} was trained for {key}={got!r}, but this run uses {key}={want!r}")
    if header.num_groups < 1 or header.state_dim != STATE_FEATURES * header.num_groups:
        raise PolicyError(
            f"policy file {p}: state_dim {header.state_dim} != {STATE_FEATURES} x num_groups {header.num_groups}"
        )
    if header.num_choices != header.num_blocks + 1:
        raise PolicyError(
            f"policy file {p}: num_choices {header.num_choices} != num_blocks + 1 ({header.num_blocks + 1})"
        )
    net = ActorCritic(header.state_dim, header.num_groups, header.num_choices)
    try:
        net.load_state_dict(data, strict=True)
    except RuntimeError as exc:
        raise PolicyError(f"policy file {p} does not fit the actor/critic networks: {exc}") from None
    net.eval()
    return net, header
