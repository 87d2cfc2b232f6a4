"""The engine's thread chooser (backend/threads.py), driven with token times and a fake
clock. Its effect on a real engine under a busy core is measured in bench.engine_contention."""

from __future__ import annotations

from backend.threads import PROBE_EVERY_S, PROBE_TOKENS, ThreadChooser


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(chooser: ThreadChooser, cost: dict[int, float], tokens: int, clock: Clock) -> list[int]:
    """Generate `tokens` tokens whose time depends on the thread count; returns the picks."""
    picks = []
    for _ in range(tokens):
        threads = chooser.pick()
        picks.append(threads)
        clock.now += cost[threads]
        chooser.record(threads, cost[threads])
    return picks


def test_one_core_means_one_thread() -> None:
    chooser = ThreadChooser(1)
    assert run(chooser, {1: 0.02}, 10, Clock()) == [1] * 10


def test_idle_machine_keeps_every_core_after_trying_one() -> None:
    clock = Clock()
    chooser = ThreadChooser(2, clock=clock)
    picks = run(chooser, {1: 0.020, 2: 0.014}, 50, clock)
    # One token with all cores, then a short try of one thread, then all cores again.
    assert picks[: 1 + PROBE_TOKENS] == [2] + [1] * PROBE_TOKENS
    assert set(picks[1 + PROBE_TOKENS :]) == {2}


def test_busy_core_switches_to_one_thread_and_comes_back_when_it_frees() -> None:
    clock = Clock()
    chooser = ThreadChooser(2, clock=clock)
    busy = {1: 0.020, 2: 0.400}  # another process holds a core: 2 threads wait on it
    picks = run(chooser, busy, 40, clock)
    assert picks.count(2) <= 1 + PROBE_TOKENS  # the first token, maybe one re-try
    assert picks[-5:] == [1] * 5
    # Within PROBE_EVERY_S the slow count is not tried again...
    start = clock.now
    picks = run(chooser, busy, 40, clock)
    assert clock.now - start < PROBE_EVERY_S and set(picks) == {1}
    # ...after it, it is, and once the core is free again, all cores come back.
    clock.now += PROBE_EVERY_S
    picks = run(chooser, {1: 0.020, 2: 0.014}, 20, clock)
    assert picks[:PROBE_TOKENS] == [2] * PROBE_TOKENS and set(picks[PROBE_TOKENS:]) == {2}


def test_a_slow_probe_does_not_displace_the_faster_count() -> None:
    clock = Clock()
    chooser = ThreadChooser(2, clock=clock)
    run(chooser, {1: 0.020, 2: 0.014}, 10, clock)
    clock.now += PROBE_EVERY_S
    picks = run(chooser, {1: 0.020, 2: 0.014}, 10, clock)
    assert picks[:PROBE_TOKENS] == [1] * PROBE_TOKENS  # the periodic re-try of one thread
    assert set(picks[PROBE_TOKENS:]) == {2}


def test_times_of_other_counts_are_ignored() -> None:
    chooser = ThreadChooser(4)
    chooser.record(3, 0.001)  # e.g. a count this chooser never picks
    assert chooser.cost == {1: None, 4: None} and chooser.pick() == 4


def test_one_slow_token_does_not_make_it_switch() -> None:
    clock = Clock()
    chooser = ThreadChooser(2, clock=clock)
    run(chooser, {1: 0.020, 2: 0.014}, 20, clock)
    chooser.record(2, 0.200)  # a passing process took the core for one token
    picks = run(chooser, {1: 0.020, 2: 0.014}, 10, clock)
    assert set(picks) == {2}
