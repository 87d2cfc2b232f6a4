"""Start real processes and servers for tests: free ports, readiness waits, clean stops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers any HTTP status, or fail with the process's output."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last!r}")


class Proc:
    """A child process whose output goes to a log file under test-artifacts/."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str] | None = None):
        ARTIFACTS.mkdir(exist_ok=True)
        self.name = name
        # Unique per process: several test runs may share the folder.
        self.log_path = ARTIFACTS / f"{name}-{os.getpid()}-{id(self):x}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


def start_engine(
    port: int | None = None, *extra: str, name: str = "engine", cpu: int | None = None
) -> tuple[Proc, str]:
    """Start the real local engine (`python -m backend`) and wait until it serves; `cpu`
    pins it to that core (taskset), so it generates with one thread."""
    port = port or free_port()
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = Proc(
        name,
        [*pin, sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port), *extra],
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", timeout=120, proc=proc.popen)
    return proc, url


@contextmanager
def refusing_url() -> Iterator[str]:
    """A URL where connections are refused: the port is bound but never listens, so no other
    server can take it while the test runs (a merely free port can be reused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def silent_url() -> Iterator[tuple[str, list[str]]]:
    """A URL where connections are taken and requests read but never answered (a backend
    still starting behind a front end that holds requests); yields it with the request
    lines received so far ("GET /api/tags HTTP/1.1", ...)."""
    lines: list[str] = []
    held: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)

        def take() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return  # closed at the end of the test
                held.append(conn)
                threading.Thread(target=read, args=(conn,), daemon=True).start()

        def read(conn: socket.socket) -> None:
            with contextlib.suppress(OSError):
                head = conn.recv(65536).decode("latin-1")
                if head:
                    lines.append(head.split("\r\n", 1)[0])

        threading.Thread(target=take, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.getsockname()[1]}", lines
        finally:
            for conn in held:
                conn.close()


@contextmanager
def ui_process(
    backend_url: str, name: str, *, port: int | None = None, **env: str
) -> Iterator[str]:
    """`python -m ui` on `port` (default: a free one) against `backend_url` (no auth, a high
    rate limit, `env` on top); yields its base URL and stops it afterwards."""
    port = port or free_port()
    proc = Proc(
        name,
        [sys.executable, "-m", "ui"],
        env={
            "PORT": str(port),
            "LLM_UI_HOST": "127.0.0.1",
            "LLM_BACKEND_URL": backend_url,
            "LLM_RATE_LIMIT": "1000",
            "LLM_AUTH": "none",
            **env,
        },
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=90, proc=proc.popen)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
