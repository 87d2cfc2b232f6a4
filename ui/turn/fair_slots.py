"""Fair waiting for a model's slots: replies beyond the backend's parallel slots wait here,
in the UI, and are served by client, not first come first served.

Ollama runs `OLLAMA_NUM_PARALLEL` replies per model at once and queues the rest in arrival
order; so does Cloud Run in front of it (`--concurrency`, deploy/deploy.py). One client that
queued many long replies would push every later client's reply behind all of them. Here each
model has `capacity` slots (LLM_MODEL_SLOTS, by default LLM_GPU_CONCURRENCY); a reply takes
one before its request is sent and gives it back when its stream ends. When a slot frees,
the waiting client holding the fewest of that model's slots gets it, and among equals the
one served longest ago: round-robin by client, so a newcomer waits for one slot to free,
however many replies another client has queued.

Per UI process, like the stream budget (ui/web/rate_limit.py): with several UI instances each
shares out its own slots. Runs on the server's one event loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SlotWait:
    """A reply waits for one of its model's slots (an event of its stream, shown as a
    banner until the reply starts: ui/view/render.py)."""

    model: str  # the model's name as the user may see it (a blind battle: its label)
    waiting: int  # replies waiting for this model's slots, this one included; 0: served
    capacity: int


@dataclass
class _ModelSlots:
    held: dict[str, int] = field(default_factory=dict)  # client -> slots in use
    waiting: dict[str, deque[asyncio.Future[None]]] = field(default_factory=dict)
    last_served: dict[str, int] = field(default_factory=dict)  # client -> turn number

    @property
    def in_use(self) -> int:
        return sum(self.held.values())


class FairSlots:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a model needs at least 1 slot, got {capacity}")
        self.capacity = capacity
        self._models: dict[str, _ModelSlots] = {}
        self._turns = itertools.count()  # orders grants: who was served longest ago

    @asynccontextmanager
    async def slot(self, model: str, client: str) -> AsyncIterator[None]:
        """Hold one of `model`'s slots for `client` inside; waits (cancellably) for one."""
        await self._acquire(model, client)
        try:
            yield
        finally:
            self._release(model, client)

    def full(self, model: str) -> bool:
        """Whether a reply for `model` would wait now."""
        pool = self._models.get(model)
        return pool is not None and (bool(pool.waiting) or pool.in_use >= self.capacity)

    def held(self, model: str) -> int:
        pool = self._models.get(model)
        return pool.in_use if pool else 0

    def waiting(self, model: str) -> int:
        pool = self._models.get(model)
        return sum(len(q) for q in pool.waiting.values()) if pool else 0

    async def _acquire(self, model: str, client: str) -> None:
        pool = self._models.setdefault(model, _ModelSlots())
        if not pool.waiting and pool.in_use < self.capacity:
            self._grant(pool, client)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pool.waiting.setdefault(client, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(model, client)  # granted just as it was cancelled: give back
            else:
                queue = pool.waiting.get(client)
                if queue is not None and granted in queue:
                    queue.remove(granted)
                    if not queue:
                        del pool.waiting[client]
                if client not in pool.held and client not in pool.waiting:
                    pool.last_served.pop(client, None)
                if not pool.held and not pool.waiting:
                    self._models.pop(model, None)
            raise

    def _release(self, model: str, client: str) -> None:
        pool = self._models[model]
        left = pool.held.get(client, 0) - 1
        if left > 0:
            pool.held[client] = left
        else:
            pool.held.pop(client, None)
            if client not in pool.waiting:
                pool.last_served.pop(client, None)  # gone: nothing to remember
        while pool.waiting and pool.in_use < self.capacity:
            nxt = min(
                pool.waiting,
                key=lambda c: (pool.held.get(c, 0), pool.last_served.get(c, -1)),
            )
            queue = pool.waiting[nxt]
            granted = queue.popleft()
            if not queue:
                del pool.waiting[nxt]
            if granted.cancelled():  # its task was cancelled and has not run since
                continue
            self._grant(pool, nxt)
            granted.set_result(None)
        if not pool.held and not pool.waiting:
            del self._models[model]  # an idle model keeps no entry (clients come and go)

    def _grant(self, pool: _ModelSlots, client: str) -> None:
        pool.held[client] = pool.held.get(client, 0) + 1
        pool.last_served[client] = next(self._turns)
