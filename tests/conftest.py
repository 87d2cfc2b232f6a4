"""Shared fixtures. One real engine process serves the whole test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client
from playwright.sync_api import Browser

from devtools.testkit.browser import chromium
from devtools.testkit.openai_servers import start_llama_cpp_server
from devtools.testkit.procs import Proc, free_port, start_engine, wait_http


@pytest.fixture(scope="session")
def load_hold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, the shared engine's model loads do not finish (a test creates
    it to see a load in progress however fast this machine loads, then removes it)."""
    return tmp_path_factory.mktemp("engine") / "hold-loads"


@pytest.fixture(scope="session")
def engine_proc(load_hold: Path) -> Iterator[tuple[Proc, str]]:
    """One real local engine shared by all tests (both models bundled), and its URL.

    Ten parallel slots per model so that concurrency tests interleave streams.
    """
    proc, url = start_engine(
        None,
        "--num-parallel",
        "10",
        "--max-queue",
        "64",
        "--hold-loads-while",
        str(load_hold),
        name="engine-session",
    )
    try:
        yield proc, url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def engine(engine_proc: tuple[Proc, str]) -> str:
    """Base URL of the shared engine."""
    return engine_proc[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (devtools/testkit/browser.py), one per test module."""
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    """A Gradio client of the module's app (for modules whose `app_url` fixture runs one)."""
    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[str]:
    """The real Firestore emulator from the Google Cloud CLI (Java), on a free port; yields
    its host:port for FIRESTORE_EMULATOR_HOST. Each test takes its own project id, so tests
    share the process but never each other's data."""
    port = free_port()
    proc = Proc(
        "firestore-emulator",
        ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}"],
        env={"CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=90, proc=proc.popen)
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on the smollm2 GGUF, one for the whole
    session (devtools/testkit/openai_servers.py), one thread; yields its URL."""
    proc, url = start_llama_cpp_server(name="llama-cpp-session")
    try:
        yield url
    finally:
        proc.stop()
