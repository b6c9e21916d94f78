"""FedAdapt's action and reward: an offloading level in [0, 1] per group, and time relative to classic FL."""

from __future__ import annotations

from collections.abc import Sequence

from edgeflower.models.profiler import ModelProfile

__all__ = ["SplitMapper", "offload_reward"]


class SplitMapper:
    """Map an action in ``[0, 1]`` to the split point whose on-device FLOP share is nearest.

    Splits with (nearly) the same share, e.g. before and after a pooling layer, are broken towards the one that
    sends fewer bytes (no offloading counts as zero bytes), so an action never picks a needlessly costly cut.

    Parameters
    ----------
    profile : ModelProfile
        The model's per-block profile.
    """

    def __init__(self, profile: ModelProfile, tie_tolerance: float = 1e-3) -> None:
        n = len(profile.blocks)
        self.num_blocks = n
        self.shares = [profile.head_flop_share(k) for k in range(n + 1)]
        self._bytes = [profile.boundary_bytes(k) if k < n else 0 for k in range(n + 1)]
        self.tie_tolerance = tie_tolerance

    def share(self, k: int) -> float:
        """On-device FLOP share of split ``k``."""
        return self.shares[k]

    def split(self, action: float) -> int:
        """The split point for ``action`` (clipped to ``[0, 1]``)."""
        a = min(1.0, max(0.0, float(action)))
        best = min(abs(s - a) for s in self.shares)
        near = [k for k, s in enumerate(self.shares) if abs(s - a) <= best + self.tie_tolerance]
        return min(near, key=lambda k: (self._bytes[k], -k))


def offload_reward(times: Sequence[float], baselines: Sequence[float]) -> float:
    """FedAdapt's reward summed over devices.

    ``+(b - t) / b`` when a device's time ``t`` beats its no-offloading time ``b``, else ``-(t - b) / t``.
    """
    total = 0.0
    for t, b in zip(times, baselines, strict=True):
        total += (b - t) / b if t < b else -(t - b) / t
    return total
