"""Per-client request limit (sliding one-minute window), kept in this process's memory.

Each UI instance counts on its own: with N Cloud Run instances a client can get up to N
times the limit in the worst case. That is fine for its purpose (stop one browser tab or
script from hogging the GPUs) and keeps the UI free of shared state.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradio import Request


class RateLimiter:
    def __init__(self, limit: int, window: float = 60.0, max_clients: int = 50_000) -> None:
        if limit < 1:
            raise ValueError(f"rate limit must be at least 1 request per window, got {limit}")
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float | None = None) -> float | None:
        """Count one request for `key`. Returns None if allowed, else the seconds until the
        oldest request in the window expires (when the next one will be allowed)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self.max_clients:
                    self._forget_idle(now)
                hits = self._hits[key] = deque()
            while hits and now - hits[0] >= self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(0.0, self.window - (now - hits[0]))
            hits.append(now)
            return None

    def tracked(self) -> int:
        """How many clients the table holds (at most `max_clients`)."""
        with self._lock:
            return len(self._hits)

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, v in self._hits.items() if not v or now - v[-1] >= self.window]
        for key in idle:
            del self._hits[key]
        if len(self._hits) >= self.max_clients:  # all busy: drop the oldest half
            by_age = sorted(self._hits, key=lambda k: self._hits[k][-1])
            for key in by_age[: len(by_age) // 2]:
                del self._hits[key]


def client_key(request: Request | None) -> str:
    """Who is asking, for rate limiting.

    On Cloud Run the connection comes from Google's front end, which appends the real client
    address as the last X-Forwarded-For entry (earlier entries are whatever the client sent,
    so they are not trusted). Elsewhere the socket peer is used; uvicorn has already
    replaced it with X-Forwarded-For for trusted local proxies (FORWARDED_ALLOW_IPS).
    """
    if request is None:
        return "unknown"
    client = request.client
    return client_key_from(request.headers, getattr(client, "host", None) if client else None)


def client_key_from(headers: Mapping[str, str], peer: str | None) -> str:
    """`client_key` from a request's headers and socket peer (for ASGI middleware)."""
    if os.environ.get("K_SERVICE"):
        forwarded = headers.get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1]
    return str(peer or "unknown")


class StreamLease:
    """Generations reserved for one client; `release` gives them back (once). A lease that
    is dropped without release (a turn prepared but never streamed) is released when it is
    garbage-collected."""

    def __init__(self, budget: StreamBudget, key: str, count: int) -> None:
        self._finalizer = weakref.finalize(self, budget._give_back, key, count)

    def release(self) -> None:
        self._finalizer()


class StreamBudget:
    """How many replies one client may have generating at once, on every page together
    (a Chat turn is one, a Compare or Battle turn one per column). Without it one client
    holding dozens of long streams fills the backends' slots and the others wait."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the stream limit must be at least 1, got {limit}")
        self.limit = limit
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, count: int) -> StreamLease | None:
        """A lease for `count` more streams of `key`, or None when that would exceed the
        limit (a single turn with more columns than the limit is allowed alone)."""
        with self._lock:
            active = self._active.get(key, 0)
            if active and active + count > self.limit:
                return None
            self._active[key] = active + count
        return StreamLease(self, key, count)

    def active(self, key: str) -> int:
        with self._lock:
            return self._active.get(key, 0)

    def _give_back(self, key: str, count: int) -> None:
        with self._lock:
            left = self._active.get(key, 0) - count
            if left > 0:
                self._active[key] = left
            else:
                self._active.pop(key, None)
