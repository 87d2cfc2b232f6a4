"""The engine subprocess that stands for the service's instances: cold, starting, ready,
stopping; started on demand after an emulated instance start, stopped to scale to zero."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from devtools.cloudrun.config import EmulatorConfig

log = logging.getLogger("devtools.cloudrun")


class StartFailed(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EngineInstance:
    """The engine subprocess that stands for the service's instances."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = "cold"  # cold | starting | ready | stopping
        self.url: str | None = config.upstream_url
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stops = 0
        self.last_start_seconds: float | None = None
        self.last_error: str | None = None
        self._start_task: asyncio.Task[str] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._log_file: Any = None
        if config.upstream_url:
            self.state = "ready"

    @property
    def managed(self) -> bool:
        return self.config.upstream_url is None

    def alive(self) -> bool:
        return not self.managed or (self.process is not None and self.process.poll() is None)

    async def ensure_ready(self) -> str:
        """The engine URL, starting the engine first if needed (callers bound the wait)."""
        while True:
            if self.state == "ready" and self.alive() and self.url:
                return self.url
            if self.state == "ready":  # it died under us: Cloud Run would start a new one
                log.warning("engine process exited unexpectedly; starting a new instance")
                self._forget_process()
            if self._stop_task is not None:
                await asyncio.shield(self._stop_task)
                continue
            if self._start_task is None:
                self._start_task = asyncio.create_task(self._start())
                # Failures reach waiting requests; with none left, do not warn about them.
                self._start_task.add_done_callback(
                    lambda task: task.cancelled() or task.exception()
                )
            return await asyncio.shield(self._start_task)

    async def _start(self) -> str:
        self.state = "starting"
        self.starts += 1
        started = time.monotonic()
        log.info(
            "cold start #%d: emulated instance start %.1fs", self.starts, self.config.start_delay
        )
        try:
            await asyncio.sleep(self.config.start_delay)
            url = await self._spawn_and_wait()
        except BaseException as exc:
            self.last_error = str(exc) or type(exc).__name__
            await self._kill_process()
            self.state = "cold"
            raise
        finally:
            self._start_task = None
        self.url = url
        self.state = "ready"
        self.last_start_seconds = time.monotonic() - started
        log.info("instance ready after %.2fs (%s)", self.last_start_seconds, url)
        return url

    async def _spawn_and_wait(self) -> str:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)]
        cmd += list(self.config.engine_args)
        output: Any = None
        if self.config.engine_log is not None:
            self.config.engine_log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = output = self.config.engine_log.open("ab")
        self.process = subprocess.Popen(
            cmd, stdout=output, stderr=subprocess.STDOUT if output else None, start_new_session=True
        )
        deadline = time.monotonic() + self.config.startup_timeout
        async with httpx.AsyncClient(timeout=httpx.Timeout(1.0)) as client:
            while True:
                if self.process.poll() is not None:
                    raise StartFailed(
                        f"engine exited with code {self.process.returncode} while starting"
                    )
                try:
                    response = await client.get(url + "/")
                    if response.status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise StartFailed(
                        f"engine did not answer within {self.config.startup_timeout:.0f}s"
                    )
                await asyncio.sleep(0.1)

    def stop(self, reason: str) -> asyncio.Task[None] | None:
        """Scale to zero. Takes effect at once: new requests wait for a new instance."""
        if not self.managed or self.state != "ready":
            return None
        self.state = "stopping"
        self._stop_task = asyncio.create_task(self._stop(reason))
        return self._stop_task

    async def _stop(self, reason: str) -> None:
        try:
            log.info("scaling to zero (%s): stopping engine pid %s", reason, self._pid())
            await self._kill_process()
            self.stops += 1
        finally:
            self.state = "cold"
            self.url = None
            self._stop_task = None

    async def shutdown(self) -> None:
        if self._start_task is not None:
            self._start_task.cancel()
            await asyncio.gather(self._start_task, return_exceptions=True)
        if self._stop_task is not None:
            await asyncio.gather(self._stop_task, return_exceptions=True)
        if self.managed:
            if self.process is not None:
                log.info("shutting down: stopping engine pid %s", self._pid())
            await self._kill_process()
            self.state = "cold"

    def _pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _forget_process(self) -> None:
        self.process = None
        self.url = None
        self.state = "cold"

    async def _kill_process(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "engine_pid": self._pid() if self.alive() else None,
            "engine_url": self.url,
            "starts": self.starts,
            "stops": self.stops,
            "last_start_seconds": self.last_start_seconds,
            "last_error": self.last_error,
        }
