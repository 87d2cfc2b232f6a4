"""Max instances x concurrency: requests beyond it wait in arrival order, up to a timeout."""

from __future__ import annotations

import asyncio
import collections


class RequestSlots:
    """`capacity` slots; a finishing request hands its slot to the longest waiter."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to `timeout` seconds; False if none came free."""
        if self.in_flight < self.capacity and not self._waiters:
            self.in_flight += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over while we were being cancelled
            waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled():
            return True  # a finishing request handed its slot over
        waiter.cancel()
        return False

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_flight stays the same
                return
        self.in_flight -= 1
