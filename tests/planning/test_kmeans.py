"""k-means grouping: deterministic, stable under permutation of the nodes, slowest group first."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflower.planning import NodeState, group_nodes, kmeans, node_features


def _partition(groups: dict[int, int]) -> set[frozenset[int]]:
    out: dict[int, set[int]] = {}
    for node, g in groups.items():
        out.setdefault(g, set()).add(node)
    return {frozenset(v) for v in out.values()}


def test_clustering_is_stable_under_permutation_of_nodes():
    rng = np.random.default_rng(1)
    feats = {int(n): tuple(rng.normal(size=2)) for n in rng.permutation(1000)[:12]}
    reference = group_nodes(feats, 3)
    for seed in range(10):
        order = list(np.random.default_rng(seed).permutation(list(feats)))
        again = group_nodes({int(n): feats[int(n)] for n in order}, 3)
        assert again == reference  # same partition *and* same group numbers


def test_separated_speed_classes_are_recovered_slowest_first():
    states = {
        1: NodeState(8.0, 75, 75),
        2: NodeState(8.2, 75, 75),
        3: NodeState(4.0, 75, 75),
        4: NodeState(4.1, 75, 75),
        5: NodeState(2.0, 75, 75),
    }
    groups = group_nodes({n: node_features(s) for n, s in states.items()}, 3)
    assert groups == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2}
    # a bandwidth drop makes the dropped devices a group of their own
    states[2] = states[2].with_bandwidth(5.0)
    states[4] = states[4].with_bandwidth(5.0)
    dropped = group_nodes({n: node_features(s) for n, s in states.items()}, 3)
    assert dropped[2] == dropped[4] and dropped[1] != dropped[2]


def test_fewer_nodes_than_groups_and_duplicates():
    assert group_nodes({7: (1.0, 0.0)}, 3) == {7: 0}
    groups = group_nodes({1: (1.0, 1.0), 2: (1.0, 1.0), 3: (0.0, 0.0)}, 3)
    assert groups[1] == groups[2] == 0 and groups[3] == 1
    assert group_nodes({}, 3) == {}
    labels, centroids = kmeans(np.array([[0.0], [0.1], [10.0], [10.2]]), 2)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert sorted(centroids[:, 0].round(2).tolist()) == [0.05, 10.1]
    with pytest.raises(ValueError):
        kmeans(np.zeros((0, 2)), 2)
