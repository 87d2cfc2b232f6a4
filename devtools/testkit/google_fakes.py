"""Google's servers for tests: one fake metadata server per test process, and emulators.

google-auth reads GCE_METADATA_HOST once, when `google.auth.compute_engine` is first
imported (at the first ID-token fetch), so one fake server must serve the whole process and
its address must be in the environment before that import. GCE_METADATA_IP (the "am I on
GCE?" ping) is read at every fetch; `metadata_for_test` sets it per test, so tests that do
not ask for the fake still see "not on Google Cloud".
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from devtools.cloudrun import EmulatorConfig, RunningEmulator, start_emulator
from devtools.fake_metadata import FakeMetadataServer, start_fake_metadata
from devtools.testkit.chat_app import running_app

_server: FakeMetadataServer | None = None
_server_lock = threading.Lock()


def shared_metadata() -> FakeMetadataServer:
    """The process-wide fake metadata server (started on first use)."""
    global _server
    with _server_lock:
        if _server is None:
            _server = start_fake_metadata()
            os.environ["GCE_METADATA_HOST"] = _server.host
        metadata_module = sys.modules.get("google.auth.compute_engine._metadata")
        seen = getattr(metadata_module, "_GCE_METADATA_HOST", _server.host)
        if seen != _server.host:
            raise RuntimeError(
                f"google-auth was imported with GCE_METADATA_HOST={seen!r} before the fake "
                f"metadata server ({_server.host}) started; start it first "
                "(devtools.testkit.google_fakes.shared_metadata())."
            )
        return _server


@contextmanager
def metadata_for_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMetadataServer]:
    """The fake metadata server, reset, and this process pointed at it for one test."""
    server = shared_metadata()
    server.reset()
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("GCE_METADATA_IP", server.host)
    yield server
    server.reset()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def emulator(**overrides: Any) -> RunningEmulator:
    """A Cloud Run emulator trusting the shared fake metadata server's tokens."""
    settings: dict[str, Any] = {"certs_url": shared_metadata().certs_url, **overrides}
    return start_emulator(EmulatorConfig(**settings))


@contextmanager
def cold_emulator(*, start_delay: float, idle_timeout: float) -> Iterator[RunningEmulator]:
    """The emulator the cold-start browser tests sit behind: Google ID tokens required, an
    emulated instance start of `start_delay` s, scale to zero after `idle_timeout` s idle,
    4 requests at once with a 5 s queue."""
    emu = emulator(
        start_delay=start_delay, idle_timeout=idle_timeout, concurrency=4, queue_timeout=5
    )
    try:
        yield emu
    finally:
        emu.stop()


# The app's settings behind a cold emulator: a known typical cold start to show, quick
# probes, a deadline longer than any emulated start.
COLD_START_SETTINGS: dict[str, Any] = {
    "typical_cold_start": 20.0,
    "probe_timeout": 0.5,
    "cold_start_deadline": 90.0,
    "rate_limit_per_minute": 1000,
}


@contextmanager
def cold_start_app(emu: RunningEmulator, **settings: Any) -> Iterator[str]:
    """The app in-process with LLM_AUTH=google behind `emu` (ID tokens from the shared fake
    metadata server), COLD_START_SETTINGS with `settings` on top; yields its base URL."""
    metadata = shared_metadata()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCE_METADATA_IP", metadata.host)
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        config = {**COLD_START_SETTINGS, **settings}
        with running_app(backend_url=emu.url, auth="google", **config) as url:
            yield url


def chat_posts(emu: RunningEmulator) -> int:
    """How many chat requests (replies and model loads) the emulator has passed on."""
    return int(emu.state()["counters"].get("POST /api/chat", 0))


def scaled_to_zero(emu: RunningEmulator) -> None:
    """Wait until the emulator has no instance (its idle time has passed)."""
    wait_until(lambda: emu.state()["state"] == "cold", timeout=60, what="scale to zero")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
