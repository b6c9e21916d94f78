"""k-means grouping of nodes, deterministic and independent of the order the nodes are given in.

FedAdapt groups devices by k-means so one agent action serves every device of a group. Here the features are
observed ones (log compute slow-down, log bandwidth), so the groups follow the devices at run time. Initialisation
is farthest-point from the lexicographically smallest point and ties are broken by the points' sorted order, so
permuting the nodes never changes the partition; groups are numbered slowest first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from edgeflower.planning.costmodel import NodeState

__all__ = ["group_nodes", "kmeans", "node_features"]


def kmeans(points: np.ndarray, k: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``points`` (n x d) into ``min(k, n)`` clusters.

    The result depends only on the set of points: they are sorted lexicographically first, centroids are
    initialised farthest-point first (from the smallest point), and Lloyd iterations run to convergence.

    Returns
    -------
    labels : ndarray of int, shape (n,)
        Cluster of each input point (in input order).
    centroids : ndarray, shape (min(k, n), d)
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or len(pts) == 0:
        raise ValueError("kmeans needs a non-empty 2-D array of points")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    order = np.lexsort(pts.T[::-1])
    sp = pts[order]
    k = min(k, len(sp))
    chosen = [0]
    dist = ((sp - sp[0]) ** 2).sum(1)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))  # first maximum in sorted order: deterministic ties
        chosen.append(nxt)
        dist = np.minimum(dist, ((sp - sp[nxt]) ** 2).sum(1))
    centroids = sp[chosen].copy()
    labels = np.zeros(len(sp), dtype=np.int64)
    for _ in range(iters):
        d = ((sp[:, None, :] - centroids[None]) ** 2).sum(2)
        new = d.argmin(1)
        for c in range(k):
            members = sp[new == c]
            if len(members):
                centroids[c] = members.mean(0)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
    out = np.empty(len(sp), dtype=np.int64)
    out[order] = labels
    return out, centroids


def node_features(state: NodeState) -> tuple[float, float]:
    """Clustering features of a node: ``(log slow-down, -log uplink bandwidth)`` (larger = slower)."""
    mbps = state.uplink_mbps if math.isfinite(state.uplink_mbps) and state.uplink_mbps > 0 else 1e4
    return math.log(max(state.slowdown, 1e-6)), -math.log(mbps)


def group_nodes(features: Mapping[int, Sequence[float]], num_groups: int) -> dict[int, int]:
    """Group nodes by k-means on their features; group 0 holds the slowest nodes.

    Parameters
    ----------
    features : mapping of node id to feature vector
        E.g. :func:`node_features` of each node's state (larger values = slower).
    num_groups : int
        Wanted groups; fewer when there are fewer nodes.

    Returns
    -------
    dict
        Node id to group index ``0..min(num_groups, n) - 1``, ordered by decreasing centroid (first feature,
        then the others).
    """
    if not features:
        return {}
    nodes = list(features)
    labels, centroids = kmeans(np.array([list(features[n]) for n in nodes], dtype=np.float64), num_groups)
    used = sorted(set(labels.tolist()))
    rank = sorted(used, key=lambda c: tuple(-v for v in centroids[c]))
    index = {c: i for i, c in enumerate(rank)}
    return {n: index[int(lab)] for n, lab in zip(nodes, labels, strict=True)}
