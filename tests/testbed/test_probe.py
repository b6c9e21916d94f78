"""The fidelity probe's turn-taking: two passes in one process run their batches strictly interleaved."""

from __future__ import annotations

import threading

from edgeflower.testbed.probe import Turns


def test_two_passes_take_turns_batch_by_batch_and_know_how_long_they_waited():
    turns, order = Turns(), []
    lengths = (4, 2)  # the second pass ends first: the first then runs its last batches without waiting

    def run(side: int) -> None:
        turns.take(side)  # as when opening the session
        for b, _ in enumerate(turns.batches(side, [(None, None)] * lengths[side])):
            order.append((side, b))
        turns.give(side, finished=True)

    threads = [threading.Thread(target=run, args=(side,)) for side in (1, 0)]  # started in the "wrong" order
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert order == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (0, 3)]
    assert all(w >= 0 for w in turns.waited)  # kept per side, taken out of its round time
