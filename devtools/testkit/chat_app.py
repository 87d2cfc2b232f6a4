"""Run the real Gradio app in-process on a free port, call its /chat endpoint, and read its
chat outputs. Only `running_app` loads Gradio, so benchmarks that time a UI in another
process can use the readers without it."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from devtools.testkit.procs import free_port
from ui.settings import Settings

if TYPE_CHECKING:
    from gradio_client import Client

# Settings every test app starts from: no auth (local backends), quick timeouts.
BASE_SETTINGS: dict[str, Any] = {
    "auth": "none",
    "connect_timeout": 3.0,
    "read_timeout": 60.0,
    "host": "127.0.0.1",
    # Refused connections fail at once here; their retries are tested in test_warming.py.
    "connect_retry_window": 0.0,
    "cold_start_deadline": 3.0,  # a backend answering 429/503 is retried this long
    # Every test client comes from 127.0.0.1, so the per-client stream and event caps would
    # make one client of many simulated users; they have their own tests (test_hardening.py,
    # which sets them back to the production defaults).
    "streams_per_client": 1000,
    "events_per_minute": 100_000,
    # The shared engine runs more than a GPU's 4 replies per model at once (concurrency
    # tests); the fair sharing of a model's slots has its own test (test_stream_fairness.py).
    "model_slots": 1000,
}


@contextmanager
def running_app(**settings: Any) -> Iterator[str]:
    """Build and launch the app; yields its base URL; closes it afterwards."""
    from ui.app import build_app, launch  # Gradio: see the module docstring

    config = Settings(**{**BASE_SETTINGS, **settings})
    demo = build_app(config)
    _, url, _ = launch(demo, config, server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url.rstrip("/")
    finally:
        demo.close()


def msg(role: str, text: str, title: str | None = None) -> dict[str, Any]:
    """A Chatbot message in the form Gradio's API accepts (content as a list of parts)."""
    message: dict[str, Any] = {"role": role, "content": [{"type": "text", "text": text}]}
    if title is not None:
        message["metadata"] = {"title": title}
    return message


def text_of(message: dict[str, Any]) -> str:
    """The text of a Chatbot message in either Gradio's content-list form or plain form."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def is_note(message: dict[str, Any]) -> bool:
    return bool((message.get("metadata") or {}).get("title"))


def note_title(message: dict[str, Any]) -> str:
    return str((message.get("metadata") or {}).get("title") or "")


def replies(history: list[dict[str, Any]]) -> list[str]:
    """Assistant reply texts (notes left out)."""
    return [text_of(m) for m in history if m["role"] == "assistant" and not is_note(m)]


def last_note(history: list[dict[str, Any]]) -> dict[str, Any]:
    notes = [m for m in history if is_note(m)]
    assert notes, f"no stats/error note in {history!r}"
    return notes[-1]


def eval_count(note: dict[str, Any]) -> int:
    match = re.search(r"(\d+) tokens? generated", text_of(note))
    assert match, f"no token count in note {note!r}"
    return int(match.group(1))


def prompt_tokens(note: dict[str, Any]) -> int:
    match = re.search(r"prompt (\d+) tokens", text_of(note))
    assert match, f"no prompt token count in note {note!r}"
    return int(match.group(1))


UNCHANGED = {"__type__": "update"}  # how gradio_client shows an output left as it was


def rejection(outputs: tuple[Any, ...]) -> str:
    """The reason shown for a /chat request that was not sent, checking that the message
    box and the chat were left unchanged."""
    box, history, banner = outputs
    assert (box, history) == (UNCHANGED, UNCHANGED), f"a rejected request changed {outputs!r}"
    assert "chat-banner-error" in banner, banner
    return html.unescape(banner)


def chat_args(
    message: str,
    history: list[dict[str, Any]] | None = None,
    *,
    model: Any = "smollm2:135m",
    system_prompt: Any = "",
    temperature: Any = 0.7,
    top_p: Any = 0.9,
    max_tokens: Any = 8,
) -> tuple[Any, ...]:
    """Positional inputs of the /chat endpoint."""
    return (message, history or [], model, system_prompt, temperature, top_p, max_tokens)


def chat(client: Client, *args: Any, **kwargs: Any) -> tuple[Any, list[dict[str, Any]], str]:
    """Call /chat with `chat_args(*args, **kwargs)`: (message box, history, banner)."""
    box, history, banner = client.predict(*chat_args(*args, **kwargs), api_name="/chat")
    return box, history, banner


def first_reply_after(job: Any, started: float, timeout: float = 30) -> float:
    """Seconds from `started` until `job` streamed a reply's first text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for outputs in job.outputs():
            history = outputs[1]
            if isinstance(history, list) and any(
                m["role"] == "assistant" and not is_note(m) and text_of(m) for m in history
            ):
                return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError("no reply started")
