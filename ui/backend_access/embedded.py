"""Pick the backend at startup, starting the embedded CPU engine when there is none.

- LLM_BACKEND_URL / OLLAMA_HOST set: use it as is.
- Otherwise, if an Ollama answers on 127.0.0.1:11434: use it.
- Otherwise: start `python -m backend --host 127.0.0.1 --port 11434` (the bundled CPU
  engine with two small models), wait until it answers, and stop it when the UI exits.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from ui.settings import DEFAULT_LOCAL_BACKEND, Settings

logger = logging.getLogger(__name__)

OLLAMA_BANNER = "Ollama is running"
PROBE_TIMEOUT_S = 2.0
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


class EngineStartError(RuntimeError):
    pass


def ollama_answers(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool | None:
    """True: an Ollama (or our engine) answers at `url`. False: something else answers.
    None: nothing listens there."""
    try:
        response = httpx.get(url.rstrip("/") + "/", timeout=timeout)
    except httpx.HTTPError:
        return None
    return OLLAMA_BANNER in response.text


class EmbeddedEngine:
    """The bundled CPU engine as a child process."""

    def __init__(
        self,
        url: str = DEFAULT_LOCAL_BACKEND,
        *,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"the engine URL needs a host and a port, got {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "backend", "--host", self.host, "--port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> str:
        """Start the engine and wait until `GET /` answers. Returns its URL."""
        logger.info("Starting the embedded CPU engine: %s", " ".join(self.command))
        # Output goes to our own stdout/stderr, so the engine's log shows in the UI's log.
        self.process = subprocess.Popen(self.command)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise EngineStartError(
                    f"The embedded engine exited with code {code} before it answered on "
                    f"{self.url}. Its log is above."
                )
            if ollama_answers(self.url, timeout=1.0):
                logger.info("Embedded engine ready on %s (pid %d)", self.url, self.process.pid)
                return self.url
            time.sleep(0.2)
        self.stop()
        raise EngineStartError(
            f"The embedded engine did not answer on {self.url} within {self.startup_timeout:g} s."
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        logger.info("Stopping the embedded engine (pid %d)", process.pid)
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


def resolve_backend(
    settings: Settings, local_url: str = DEFAULT_LOCAL_BACKEND
) -> tuple[Settings, EmbeddedEngine | None]:
    """Settings with `backend_url` filled in, and the engine started for it (if any).
    The caller stops the engine on exit. `local_url` is where an Ollama is looked for and
    the engine started (Ollama's default address; tests pass a free port)."""
    if settings.backend_url:
        logger.info("Model backend: %s (%s API)", settings.backend_url, settings.backend_api)
        return settings, None
    if settings.backend_api != "ollama":
        raise EngineStartError(
            f"LLM_BACKEND_API={settings.backend_api} needs LLM_BACKEND_URL: the local "
            "Ollama and the embedded engine speak Ollama's API."
        )
    found = ollama_answers(local_url)
    if found:
        logger.info("Model backend: the Ollama already running on %s", local_url)
        return settings.model_copy(update={"backend_url": local_url}), None
    if found is False:
        raise EngineStartError(
            f"Something that is not Ollama answers on {local_url}, so the embedded engine "
            "cannot use that port. Stop it, or set LLM_BACKEND_URL to your Ollama."
        )
    logger.info(
        "No LLM_BACKEND_URL and no Ollama on %s: starting the embedded CPU engine "
        "(small local models).",
        local_url,
    )
    engine = EmbeddedEngine(local_url)
    url = engine.start()
    return settings.model_copy(update={"backend_url": url}), engine
