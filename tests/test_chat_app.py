"""The chat app, launched for real against the real local engine, driven via gradio_client."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from gradio_client import Client

from devtools.testkit.chat_app import (
    chat,
    chat_args,
    eval_count,
    is_note,
    last_note,
    msg,
    note_title,
    prompt_tokens,
    rejection,
    replies,
    running_app,
    text_of,
)
from devtools.testkit.procs import ARTIFACTS, Proc, free_port, wait_http
from ui.backend_access.labels import label_for
from ui.errors import InputRejected
from ui.turn.checks import check_number
from ui.turn.figures import NoteData, ReplyFigures, read_note_data
from ui.turn.history import HistoryRejected, conversation, fit_to_context, parse_history
from ui.turn.stop_signals import until_stopped
from ui.view.notes import error_note, stats_note, stopped_note
from ui.web.rate_limit import RateLimiter

MODEL = "smollm2:135m"
MAX_CHARS = 300
TOKENS_LIMIT = 64
CONTEXT = 512
ALLOWED = ["smollm2:135m", "gemma3:270m", "ghost:1b"]  # ghost: allowed, but no backend has it


@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(
        backend_url=engine,
        allowed_models=ALLOWED,
        max_message_chars=MAX_CHARS,
        max_tokens_limit=TOKENS_LIMIT,
        context_tokens=CONTEXT,
        rate_limit_per_minute=1000,
    ) as url:
        yield url


# === model list ===========================================================================
def test_models_endpoint_matches_engine_tags(client: Client, engine: str) -> None:
    tags = {t["model"] for t in httpx.get(f"{engine}/api/tags", timeout=10).json()["models"]}
    models = client.predict(api_name="/models")
    # The allow-list also names ghost:1b, which the engine lacks: only real models show.
    assert {m["tag"] for m in models} == tags & set(ALLOWED) == {"smollm2:135m", "gemma3:270m"}
    labels = {m["tag"]: m["label"] for m in models}
    assert labels["gemma3:270m"] == (
        "Gemma 3 270M (base) — Gemma · 270M · base model, not chat-tuned"
    )
    assert labels[MODEL] == "SmolLM2 135M Instruct — Llama · 135M"


# === streaming ============================================================================
def test_reply_streams_token_by_token(client: Client) -> None:
    job = client.submit(*chat_args("Tell me about the sea.", max_tokens=24), api_name="/chat")
    job.result(timeout=120)
    outputs = job.outputs()
    first_box, first_history, _ = outputs[0]
    assert first_box == "", "the message box is cleared once the message is accepted"
    assert [m["role"] for m in first_history] == ["user"], "the message shows before tokens"
    assert text_of(first_history[0]) == "Tell me about the sea."

    partials = [r[-1] for _, history, _ in outputs if (r := replies(history))]
    assert len(set(partials)) >= 5, f"expected many growing partial replies, got {partials!r}"
    for shorter, longer in itertools.pairwise(partials):
        assert longer.startswith(shorter), "each update extends the reply"
    final_history = outputs[-1][1]
    assert replies(final_history)[-1] == partials[-1]
    note = last_note(final_history)
    title = note_title(note)
    for figure in ("s to first token", "tokens/s", "s total"):
        assert figure in title
    assert 1 <= eval_count(note) <= 24
    assert outputs[-1][2] == "", "no banner after a good reply"


def test_max_tokens_caps_the_reply(client: Client) -> None:
    # Greedy decoding of a prompt whose answer is long: the model does not stop by itself.
    _, history, _ = chat(
        client, "Write a long essay about the history of Rome.", temperature=0, max_tokens=5
    )
    note = last_note(history)
    assert eval_count(note) == 5
    assert "stopped at the max-tokens limit" in text_of(note)


def test_system_prompt_reaches_the_engine(client: Client) -> None:
    _, plain, _ = chat(client, "Hi", max_tokens=1)
    # Longer than the default system prompt the model's chat template adds without one.
    system = "You are a pirate and always answer like one, with many nautical words. " * 4
    _, with_system, _ = chat(client, "Hi", system_prompt=system, max_tokens=1)
    assert prompt_tokens(last_note(with_system)) >= prompt_tokens(last_note(plain)) + 30


def test_history_is_sent_and_trimmed_to_the_context(client: Client) -> None:
    history: list[dict[str, Any]] = []
    # ~8 x (72 + 133) estimated tokens, far over the 512-token context; each message
    # within the limits a new one has (MAX_CHARS for the user's, the longest reply).
    for i in range(8):
        history.append(msg("user", f"Question {i}: " + "tell me more " * 21))
        history.append(msg("assistant", f"Answer {i}: " + "here is more " * 40))
    _, result, _ = chat(client, "Summarize.", history, max_tokens=2)
    note = last_note(result)
    assert "oldest messages were left out to fit the model's context" in text_of(note)
    assert note.get("metadata", {}).get("status") != "done", "a note with a notice stays open"
    assert prompt_tokens(note) < CONTEXT
    # The history shown keeps everything: trimming only affects what the model sees.
    assert [text_of(m) for m in result[: len(history)]] == [text_of(m) for m in history]


# === bad input ============================================================================
@pytest.mark.parametrize("message", ["", "   \n\t "])
def test_empty_message_sends_nothing_and_hints(client: Client, message: str) -> None:
    box, history, banner = chat(client, message, [msg("user", "earlier")])
    assert "Type a message first" in banner
    # Nothing was changed: Gradio reports skipped outputs as bare updates.
    assert box == {"__type__": "update"} and history == {"__type__": "update"}


def test_too_long_message_is_rejected_and_kept(client: Client) -> None:
    reason = rejection(chat(client, "x" * (MAX_CHARS + 1)))
    assert f"{MAX_CHARS + 1} characters long; the limit is {MAX_CHARS}" in reason


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"model": "llama9:7b"}, "The model “llama9:7b” is not offered here"),
        ({"model": ""}, "Pick a model first"),
        ({"model": 7}, "The model must be a model name"),
        ({"temperature": "hot"}, "Temperature must be a number, not str 'hot'"),
        ({"max_tokens": None}, "Max tokens must be a number, not empty"),
        ({"top_p": True}, "Top-p must be a number"),
        ({"system_prompt": "s" * (MAX_CHARS + 1)}, "The system prompt is 301 characters"),
    ],
)
def test_bad_model_and_parameters_are_rejected(
    client: Client, overrides: dict[str, Any], words: str
) -> None:
    assert words in rejection(chat(client, "Hello", **overrides))


def test_malformed_history_is_rejected(client: Client) -> None:
    assert "role 'wizard'" in rejection(chat(client, "Hello", [msg("wizard", "boo")]))


def test_message_of_wrong_type_is_rejected(client: Client) -> None:
    outputs = client.predict(42, [], MODEL, "", 0.7, 0.9, 4, api_name="/chat")
    assert "The message must be text" in rejection(outputs)


def test_out_of_range_parameters_are_clamped_with_a_notice(client: Client) -> None:
    _, history, _ = chat(client, "Hello", temperature=3.5, top_p=1.7, max_tokens=-3)
    note = last_note(history)
    notes = text_of(note)
    assert "Temperature 3.5 is outside 0–2; used 2." in notes
    assert "Top-p 1.7 is outside 0–1; used 1." in notes
    assert "Max tokens -3 is outside 1–64; used 1." in notes
    assert eval_count(note) == 1


def test_allow_listed_model_the_engine_lacks_gets_a_404_note(client: Client) -> None:
    _, history, _ = chat(client, "Hello", model="ghost:1b")
    assert history[0]["role"] == "user" and text_of(history[0]) == "Hello"
    note = last_note(history)
    assert "“ghost:1b” is not available on the backend" in note_title(note)
    assert "Your message is kept" in text_of(note)
    assert replies(history) == []


# === retry and undo =======================================================================
def test_retry_replaces_the_last_reply(client: Client) -> None:
    history = [
        msg("user", "First question"),
        msg("assistant", "First answer"),
        msg("user", "Say something"),
        msg("assistant", "OLD REPLY"),
        msg("assistant", "stats", title="0.1 s total"),
    ]
    box, result, _ = client.predict(history, MODEL, "", 0.7, 0.9, 4, api_name="/retry")
    assert box == {"__type__": "update"}, "retry leaves the message box alone"
    assert [text_of(m) for m in result[:3]] == ["First question", "First answer", "Say something"]
    assert "OLD REPLY" not in [text_of(m) for m in result]
    assert is_note(result[-1]) and eval_count(result[-1]) <= 4


def test_undo_gives_the_last_message_back(client: Client) -> None:
    history = [
        msg("user", "Keep me"),
        msg("assistant", "Kept"),
        msg("user", "Take me back"),
        msg("assistant", "Gone"),
    ]
    result, box = client.predict(history, api_name="/undo")
    assert [text_of(m) for m in result] == ["Keep me", "Kept"]
    assert box == "Take me back"


# === many users at once ===================================================================
def _ten_streams(app_url: str, max_tokens: int) -> tuple[dict[int, float], dict[int, float]]:
    """10 clients send a message at the same instant; seconds to each first token and end."""
    clients = [Client(app_url, verbose=False) for _ in range(10)]
    first_token: dict[int, float] = {}
    finished: dict[int, float] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(clients))
    t0 = time.monotonic()

    def run(i: int, c: Client) -> None:
        try:
            start.wait(timeout=30)
            job = c.submit(
                *chat_args(f"Write a long story about dragon number {i}.", max_tokens=max_tokens),
                api_name="/chat",
            )
            for _, history, _ in job:
                if i not in first_token and replies(history) and replies(history)[-1]:
                    first_token[i] = time.monotonic() - t0
            job.result(timeout=300)
            finished[i] = time.monotonic() - t0
            if i not in first_token:  # every output arrived in one batch
                first_token[i] = finished[i]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=320)
    assert not errors, errors
    return first_token, finished


def test_ten_streams_interleave(app_url: str) -> None:
    """10 clients at once: every one gets its first token before any of them finishes."""
    # A first round makes the engine build its 10 contexts (3-6 s on 2 busy cores, the
    # engine's own cold path, tested elsewhere); the second round measures how the UI
    # interleaves users. Without it, one stream could finish while the engine was still
    # building the others' contexts. The first round's replies are long enough (16 tokens)
    # to overlap, so that each takes a context of its own rather than reusing a freed one.
    _ten_streams(app_url, max_tokens=16)
    first_token, finished = _ten_streams(app_url, max_tokens=48)
    ARTIFACTS.mkdir(exist_ok=True)
    figures = {
        "first_token_s": [round(first_token[i], 2) for i in range(10)],
        "finished_s": [round(finished[i], 2) for i in range(10)],
    }
    (ARTIFACTS / "chat_concurrency.json").write_text(json.dumps(figures, indent=1))
    assert max(first_token.values()) < min(finished.values()), figures


# === `python -m ui` ======================================================================
def test_python_m_ui_serves_on_port_and_exits_on_sigterm(engine: str) -> None:
    port = free_port()
    proc = Proc(
        "ui-main",
        [sys.executable, "-m", "ui"],
        env={"PORT": str(port), "LLM_BACKEND_URL": engine, "LLM_UI_HOST": "127.0.0.1"},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=90, proc=proc.popen)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "Serverless LLM Chat" in page.text
        models = Client(f"http://127.0.0.1:{port}", verbose=False).predict(api_name="/models")
        assert MODEL in [m["tag"] for m in models]
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=30) == 0
    finally:
        proc.stop()
    assert f"Model backend: {engine}" in proc.log()


# === the pieces, without a server =========================================================
def test_context_fitting_drops_oldest_turns_and_keeps_system_and_newest() -> None:
    turns = [
        {"role": "user", "content": "old question " * 40},
        {"role": "assistant", "content": "old answer " * 40},
        {"role": "user", "content": "recent question"},
        {"role": "assistant", "content": "recent answer"},
        {"role": "user", "content": "newest " * 200},
    ]
    fitted = fit_to_context("Be brief.", turns, context_tokens=512, reply_tokens=64)
    assert fitted.messages[0] == {"role": "system", "content": "Be brief."}
    assert fitted.messages[1:] == turns[2:]
    assert fitted.dropped == 2
    assert fitted.estimated_tokens <= 512 - 64
    roomy = fit_to_context("", turns, context_tokens=8192, reply_tokens=64)
    assert roomy.messages == turns and roomy.dropped == 0
    # The newest message is kept even when it alone is too big.
    alone = fit_to_context("", turns, context_tokens=256, reply_tokens=64)
    assert alone.messages == turns[-1:]


def test_notes_are_not_conversation_and_carry_their_figures_as_data() -> None:
    figures = ReplyFigures(
        ttft_s=0.214, total_s=0.74, tokens_per_s=95.31, eval_count=48, prompt_tokens=23,
        load_s=0.52, done_reason="length",
    )  # fmt: skip
    data = NoteData(figures=figures, model=MODEL, mac="A" * 22)
    note = stats_note(figures, model=MODEL, data=data)
    title = note["metadata"]["title"]
    assert title == "0.21 s to first token · 95.3 tokens/s · 0.74 s total · model load 0.52 s"
    assert note["content"] == (
        f"48 tokens generated by {MODEL} · prompt 23 tokens · stopped at the max-tokens limit"
    )
    # The figures come back as data, exactly, through the history the browser sends back.
    assert read_note_data(parse_history([note])[0]) == data
    quick_load = stats_note(ReplyFigures(ttft_s=0.1, total_s=0.2, load_s=0.01))
    assert "model load" not in quick_load["metadata"]["title"]
    stopped = stopped_note(ReplyFigures(ttft_s=0.3, total_s=1.5))
    assert stopped["metadata"]["title"] == "Stopped · 0.30 s to first token · 1.50 s total"
    error = error_note("The model backend cannot be reached.", partial=True)
    assert read_note_data(stopped) is None and read_note_data(error) is None
    for forged in ("not json", '{"figures": {"total_s": -1}, "model": "m"}', "x" * 5000):
        assert read_note_data({"metadata": {"title": "t", "id": forged}}) is None
    history = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        note,
        {"role": "user", "content": "Q2"},
        error,
        {"role": "assistant", "content": "  "},
    ]
    assert conversation(history) == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q2"},
    ]


def test_history_parsing_accepts_gradio_and_plain_forms_only() -> None:
    parsed = parse_history([msg("user", "Hi"), {"role": "assistant", "content": "Hello"}])
    assert parsed == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    file_part = {"type": "file", "file": {"path": "/etc/passwd"}}
    with pytest.raises(HistoryRejected, match="holds a file or component"):
        parse_history([{"role": "user", "content": [file_part]}])
    with pytest.raises(HistoryRejected, match="must be a list"):
        parse_history("Hi")


def test_rate_limiter_counts_per_client_in_a_sliding_minute() -> None:
    limiter = RateLimiter(2)
    assert limiter.acquire("a", now=0.0) is None
    assert limiter.acquire("a", now=1.0) is None
    assert limiter.acquire("a", now=2.0) == pytest.approx(58.0)
    assert limiter.acquire("b", now=2.0) is None
    assert limiter.acquire("a", now=60.5) is None


@pytest.mark.parametrize(
    ("value", "expected", "notice"),
    [
        (0.5, 0.5, None),
        (3, 2.0, "Temperature 3 is outside 0–2; used 2."),
        (-1.5, 0.0, "Temperature -1.5 is outside 0–2; used 0."),
    ],
)
def test_check_number_clamps_with_a_notice(value: float, expected: float, notice: Any) -> None:
    assert check_number("Temperature", value, 0.0, 2.0) == (expected, notice)


@pytest.mark.parametrize("value", ["0.5", None, True, float("nan"), [1]])
def test_check_number_rejects_non_numbers(value: object) -> None:
    with pytest.raises(InputRejected, match="Temperature must be a"):
        check_number("Temperature", value, 0.0, 2.0)


def test_labels_for_catalog_and_unknown_models() -> None:
    assert label_for("mystery:7b", reported_family="qwen2", parameter_size="7.6B").text == (
        "mystery:7b — Other · 7.6B"
    )
    assert label_for("llama3.2:3b").text == "Llama 3.2 3B — Llama · 3.2B"


def test_until_stopped_ends_a_stream_and_closes_it() -> None:
    closed = asyncio.Event()

    async def two_then_silence() -> AsyncIterator[int]:
        try:
            yield 0
            yield 1
            await asyncio.Event().wait()  # no third item, ever: only a stop can end this
            yield 2
        finally:
            closed.set()

    async def run() -> list[int]:
        stop = asyncio.Event()
        seen: list[int] = []

        async def read() -> None:
            async for item in until_stopped(two_then_silence(), stop):
                seen.append(item)
                if item == 1:  # the stop comes while the next item is awaited
                    asyncio.get_running_loop().call_later(0.05, stop.set)

        # A stop that waited for the next item would never end (the timeout says so).
        await asyncio.wait_for(read(), timeout=30)
        await asyncio.wait_for(closed.wait(), timeout=30)
        return seen

    assert asyncio.run(run()) == [0, 1]
