"""Serving the emulator: on a background thread (tests, embedding) or on a bound socket."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from backend.server import IDLE_CONNECTION_S
from devtools.cloudrun.config import EmulatorConfig, default_audiences
from devtools.cloudrun.proxy import STATE_PATH, CloudRunEmulator


class RunningEmulator:
    """An emulator serving on a background thread (tests, embedding)."""

    def __init__(self, app: CloudRunEmulator, server: uvicorn.Server, sock: socket.socket) -> None:
        self.app = app
        self._server = server
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cloudrun-emulator", daemon=True
        )

    def start(self, timeout: float = 10.0) -> RunningEmulator:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Cloud Run emulator did not start")
            time.sleep(0.02)
        return self

    def state(self, timeout: float = 5.0) -> dict[str, Any]:
        response = httpx.get(self.url + STATE_PATH, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def build_emulator(config: EmulatorConfig, port: int) -> CloudRunEmulator:
    audiences = list(config.audiences) or default_audiences(port)
    return CloudRunEmulator(config, audiences)


def start_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve the emulator on a background thread; `.url`, `.state()`, `.stop()`."""
    sock = bind(host, port)
    app = build_emulator(config, int(sock.getsockname()[1]))
    return RunningEmulator(app, uvicorn_server(app), sock).start()


def uvicorn_server(app: CloudRunEmulator) -> uvicorn.Server:
    """Quiet (the emulator logs what matters) and without uvicorn's Server header. Idle
    connections stay open as long as the local engine keeps them (backend/server.py
    IDLE_CONNECTION_S): uvicorn's 5 s default races the UI's 5 s keep-alive."""
    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            server_header=False,
            timeout_keep_alive=IDLE_CONNECTION_S,
        )
    )
