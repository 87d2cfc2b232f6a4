"""How many llama.cpp threads a stream generating alone should use, chosen by measurement.

On an idle machine every core helps (the bundled models decode ~1.5x faster with 2 threads
than with 1 on 2 cores). But llama.cpp's threads wait for each other at every layer, so
when another process keeps one core busy (the UI under load, a browser, a test run, a
noisy neighbour) the thread sharing that core makes all of them wait: a 150-token Gemma
reply took 84 s instead of 2.9 s with one busy-loop process beside it, while one thread
takes the free core and runs at full speed. The chooser times tokens at each count and
uses the cheaper one (the median of the last few tokens, so that one token slowed by a
passing process does not make it switch), re-trying the other for a few tokens every few
seconds, since the machine's load comes and goes. `bench.engine_contention` measures it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

PROBE_EVERY_S = 5.0  # how often the count not in use is tried again
PROBE_TOKENS = 3  # tokens per try (their median: the first may pay for the switch)
WINDOW = 8  # the estimate is the median time of the last WINDOW tokens at a count


class ThreadChooser:
    """Picks 1 or `many` threads; call `pick()` before a token and `record()` after it."""

    def __init__(self, many: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.many = max(1, many)
        self._clock = clock
        self._lock = threading.Lock()
        # Seconds per token at each count: the median of recent tokens, None until measured.
        self.cost: dict[int, float | None] = {1: None, self.many: None}
        self._recent: dict[int, deque[float]] = {n: deque(maxlen=WINDOW) for n in self.cost}
        self._probing: int | None = None  # the count being tried, if any
        self._last_probe = clock()

    def pick(self) -> int:
        if self.many == 1:
            return 1
        with self._lock:
            if self._probing is not None:
                return self._probing
            if self.cost[self.many] is None:
                return self.many
            if self.cost[1] is None or self._clock() - self._last_probe >= PROBE_EVERY_S:
                self._probing = self._other(self._best())
                self._recent[self._probing].clear()  # its old times may be stale
                return self._probing
            return self._best()

    def record(self, threads: int, seconds: float) -> None:
        """One token took `seconds` with `threads` threads."""
        if self.many == 1 or threads not in self.cost:
            return
        with self._lock:
            recent = self._recent[threads]
            recent.append(seconds)
            if self._probing == threads:
                if len(recent) < PROBE_TOKENS:
                    return
                self._probing = None
                self._last_probe = self._clock()
            self.cost[threads] = statistics.median(recent)

    def _best(self) -> int:
        many, one = self.cost[self.many], self.cost[1]
        if one is None:
            return self.many
        if many is None:
            return 1
        return self.many if many <= one else 1

    def _other(self, count: int) -> int:
        return 1 if count == self.many else self.many
