"""The Compare tab and the share endpoints, app launched for real against the real engine,
driven through gradio_client."""

from __future__ import annotations

import html
import random
import string
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gradio_client import Client

from devtools.cloudrun import EmulatorConfig, start_emulator
from devtools.testkit.chat_app import (
    UNCHANGED,
    eval_count,
    is_note,
    last_note,
    msg,
    note_title,
    prompt_tokens,
    replies,
    running_app,
    text_of,
)
from ui.backend_access.labels import label_for
from ui.pages.compare import default_models
from ui.share.format import SharedConversation, decode_share
from ui.turn.figures import NoteData, ReplyFigures
from ui.view.notes import stats_note

SMOL, GEMMA = "smollm2:135m", "gemma3:270m"
ALLOWED = [SMOL, GEMMA, "ghost:1b"]  # ghost: allowed, but no backend has it
MAX_CHARS = 300
SECRET = "compare-test-share-secret-0123456789"


@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(
        backend_url=engine,
        allowed_models=ALLOWED,
        max_message_chars=MAX_CHARS,
        max_tokens_limit=64,
        rate_limit_per_minute=1000,
        share_secret=SECRET,
    ) as url:
        yield url


def compare_args(
    message: Any,
    models: Any = (SMOL, GEMMA),
    histories: Any = ([], [], []),
    *,
    system_prompt: Any = "",
    temperature: Any = 0.7,
    max_tokens: Any = 8,
) -> tuple[Any, ...]:
    models = list(models) if isinstance(models, tuple) else models
    return (message, models, system_prompt, temperature, max_tokens, *histories)


def compare(client: Client, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    return tuple(client.predict(*compare_args(*args, **kwargs), api_name="/compare"))


def columns(outputs: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    """(history, status) per column."""
    rest = outputs[2:]
    return [(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]


def unchanged(output: Any) -> bool:
    """An output left as it was (gr.skip(); HTML outputs wrap it in "props")."""
    return output == UNCHANGED or output == {"props": UNCHANGED, **UNCHANGED}


def rejected(outputs: tuple[Any, ...]) -> str:
    box, banner, *rest = outputs
    assert unchanged(box) and all(unchanged(o) for o in rest), outputs
    return html.unescape(banner)


# === validation ===========================================================================
@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        (("",), {}, "Type a message first"),
        (("x" * (MAX_CHARS + 1),), {}, f"the limit is {MAX_CHARS}"),
        (("Hi", [SMOL]), {}, "Pick at least 2 models to compare (you picked 1)"),
        (("Hi", []), {}, "Pick at least 2 models to compare (none is picked)"),
        (("Hi", [SMOL, GEMMA, "ghost:1b", "x:1b"]), {}, "Pick at most 3 models"),
        (("Hi", [SMOL, "smollm2:135m "]), {}, "“smollm2:135m” is picked twice"),
        (("Hi", [SMOL, "llama9:70b"]), {}, "The model “llama9:70b” is not offered here"),
        (("Hi", [SMOL, "bad name!"]), {}, "“bad name!” is not a valid model name"),
        (("Hi", 5), {}, "The models must be a list of model names, not int"),
        (("Hi", [SMOL, 7]), {}, "Each model must be a model name, not int"),
        (("Hi",), {"temperature": "hot"}, "Temperature must be a number, not str 'hot'"),
        (("Hi",), {"max_tokens": None}, "Max tokens must be a number, not empty"),
        (("Hi",), {"system_prompt": "s" * (MAX_CHARS + 1)}, "The system prompt is 301"),
        (
            ("Hi", (SMOL, GEMMA), ([], [msg("wizard", "boo")], [])),
            {},
            "Column 2: Chat history entry 1 has role 'wizard'",
        ),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(
    client: Client, args: tuple[Any, ...], kwargs: dict[str, Any], words: str
) -> None:
    assert words in rejected(compare(client, *args, **kwargs))


def test_unknown_model_without_allow_list(engine: str) -> None:
    with running_app(backend_url=engine, rate_limit_per_minute=1000) as url:
        outputs = compare(Client(url, verbose=False), "Hi", [SMOL, "ghost:1b"])
    assert "The model “ghost:1b” is not available. Available: " in rejected(outputs)


# === streaming ============================================================================
def test_both_columns_get_the_reply_and_its_figures(client: Client) -> None:
    job = client.submit(*compare_args("Name three colours.", max_tokens=16), api_name="/compare")
    final = tuple(job.result(timeout=120))
    first = columns(tuple(job.outputs()[0]))
    assert [text_of(m) for m in first[0][0]] == ["Name three colours."]  # shown at once
    assert job.outputs()[0][0] == ""  # the prompt box is cleared
    (h1, s1), (h2, s2), (h3, s3) = columns(final)
    for history, status in ((h1, s1), (h2, s2)):
        assert replies(history), history
        note = last_note(history)
        for figure in ("s to first token", "tokens/s", "s total"):
            assert figure in note_title(note)
        assert 1 <= eval_count(note) <= 16
        assert "to first token" in status and "tokens/s" in status
        assert f"{eval_count(note)} token" in status
        assert "model load" in status or "model already loaded" in status
    assert "by smollm2:135m" in text_of(last_note(h1))
    assert "by gemma3:270m" in text_of(last_note(h2))
    assert (h3, s3) == ([], "")
    assert final[1] == ""  # no banner


def test_follow_up_continues_each_models_own_conversation(client: Client) -> None:
    first = compare(client, "My name is Ada.", max_tokens=6)
    histories = [h for h, _ in columns(first)]
    second = compare(client, "What is my name?", histories=histories, max_tokens=6)
    for before, (after, _) in zip(histories[:2], columns(second)[:2], strict=True):
        assert [text_of(m) for m in after[: len(before)]] == [text_of(m) for m in before]
        assert [text_of(m) for m in after if m["role"] == "user"] == [
            "My name is Ada.",
            "What is my name?",
        ]
        # The earlier turn reached the model: the prompt is longer than the first one.
        notes = [m for m in after if is_note(m)]
        assert prompt_tokens(notes[1]) > prompt_tokens(notes[0])
    # Each column kept its own answers.
    assert replies(columns(second)[0][0])[0] == replies(histories[0])[0]
    assert replies(columns(second)[1][0])[0] == replies(histories[1])[0]


def test_a_failing_column_does_not_stop_the_others(client: Client) -> None:
    outputs = compare(client, "Hello", [SMOL, "ghost:1b", GEMMA], max_tokens=6)
    (h1, s1), (h2, s2), (h3, s3) = columns(outputs)
    assert replies(h1) and replies(h3)
    assert "tokens/s" in s1 and "tokens/s" in s3
    assert replies(h2) == []
    assert "“ghost:1b” is not available on the backend" in note_title(last_note(h2))
    assert "compare-status-error" in s2 and "ghost:1b" in html.unescape(s2)


def test_columns_stream_at_the_same_time_and_stop_together(client: Client) -> None:
    job = client.submit(
        *compare_args("Write a very long story about a dragon.", max_tokens=64, temperature=0.9),
        api_name="/compare",
    )
    # Long answers (64 tokens each, far from done when both have started): an update
    # with both answers under way and neither finished shows that they run at once.
    deadline = time.monotonic() + 90
    while True:
        updates = job.outputs()
        latest = columns(tuple(updates[-1])) if updates else []
        if latest and all(replies(h) for h, _ in latest[:2]):
            break
        assert not job.done() and time.monotonic() < deadline, "the answers did not both start"
        time.sleep(0.05)
    assert not any(is_note(m) for h, _ in latest[:2] for m in h), "one answer was already over"
    client.predict(api_name="/compare_stop")
    final = tuple(job.result(timeout=30))
    for history, status in columns(final)[:2]:
        assert "Stopped" in note_title(last_note(history))
        assert "Stopped" in status
        assert replies(history)


def test_defaults_pick_one_model_per_family() -> None:
    labels = [label_for(t) for t in ("gemma3:270m", "gemma3:4b", "llama3.2:3b", "smollm2:135m")]
    # Chat-tuned first within a family, list order kept, one per family.
    assert default_models(labels) == ["gemma3:4b", "llama3.2:3b"]
    assert default_models([label_for(GEMMA), label_for(SMOL)]) == [GEMMA, SMOL]
    assert default_models([label_for("gemma3:4b"), label_for(GEMMA)]) == ["gemma3:4b", GEMMA]


# === share ================================================================================
def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["share"][0]


def test_share_a_comparison_then_continue_from_a_copy(client: Client, app_url: str) -> None:
    outputs = compare(client, "Name a colour.", system_prompt="Be brief.", max_tokens=6)
    histories = [h for h, _ in columns(outputs)]
    link, notice = client.predict(
        [SMOL, GEMMA], "Be brief.", 0.7, 6, *histories, api_name="/share_compare"
    )
    assert link.startswith(app_url + "/?share="), link
    assert "Link ready" in notice
    conv = decode_share(token_of(link), SECRET.encode())
    assert isinstance(conv, SharedConversation) and conv.kind == "compare"
    assert [c.model for c in conv.columns] == [SMOL, GEMMA]
    assert conv.parameters.system_prompt == "Be brief." and conv.parameters.max_tokens == 6
    for column, history in zip(conv.columns, histories[:2], strict=True):
        assert [m.content for m in column.messages] == ["Name a colour.", replies(history)[0]]
        stats = column.messages[1].stats
        assert stats is not None and stats.eval_count == eval_count(last_note(history))

    copy = client.predict(token_of(link), api_name="/continue_copy")
    # (The tab switch is not an API output: gradio_client leaves layout updates out.)
    notice, *chat_outputs = copy
    assert "A copy is loaded" in notice
    compare_outputs = chat_outputs[6:]
    models, system, _temperature, max_tokens, chat_1, chat_2, chat_3 = compare_outputs
    assert models == [SMOL, GEMMA] and system == "Be brief." and max_tokens == 6
    assert replies(chat_1) == replies(histories[0]) and replies(chat_2) == replies(histories[1])
    assert chat_3 == []
    assert all(unchanged(o) for o in chat_outputs[:6])  # the chat is left alone


def test_share_chat_and_too_long_conversations(client: Client, app_url: str) -> None:
    figures = ReplyFigures(ttft_s=0.1, tokens_per_s=50.0, total_s=0.3)
    note = stats_note(figures, data=NoteData(figures=figures, model=SMOL))
    reply_note = msg("assistant", note["content"], title=note["metadata"]["title"])
    reply_note["metadata"]["id"] = note["metadata"]["id"]  # the figures, as data
    history = [msg("user", "Hi"), msg("assistant", "Hello!"), reply_note]
    link, notice = client.predict(history, SMOL, "", 0.5, 0.9, 16, api_name="/share_chat")
    conv = decode_share(token_of(link), SECRET.encode())
    assert conv.kind == "chat" and conv.columns[0].model == SMOL
    assert conv.columns[0].display_name == "SmolLM2 135M Instruct"
    assert conv.columns[0].messages[1].stats is not None
    assert conv.columns[0].messages[1].stats.tokens_per_s == 50.0

    # Random text barely compresses: 12 turns of ~1,000 characters cannot fit one link.
    rng = random.Random(7)
    noise = lambda: "".join(rng.choices(string.ascii_letters, k=1000))  # noqa: E731
    long_history = []
    for i in range(12):
        long_history += [msg("user", f"Q{i} {noise()}"), msg("assistant", f"A{i} {noise()}")]
    link, notice = client.predict(long_history, SMOL, "", 0.5, 0.9, 16, api_name="/share_chat")
    text = html.unescape(notice)
    assert "too long to fit in one link (12 turns)" in text and "shares only the last" in text
    kept = decode_share(token_of(link), SECRET.encode()).columns[0].messages
    assert 1 <= len(kept) // 2 < 12 and kept[-1].content.startswith("A11 ")

    empty_link, empty_notice = client.predict([], SMOL, "", 0.5, 0.9, 16, api_name="/share_chat")
    assert empty_link == "" and "nothing to share yet" in empty_notice
    _, bad_model = client.predict(history, "llama9:7b", "", 0.5, 0.9, 16, api_name="/share_chat")
    assert "not offered here" in html.unescape(bad_model)


# === cold backends ========================================================================
def test_each_column_shows_its_own_warming_state(engine: str) -> None:
    """Gemma lives on a scaled-to-zero backend (the Cloud Run emulator, instance start
    1.5 s), SmolLM on the warm engine: only Gemma's column shows the warming banner, and
    SmolLM's answer streams meanwhile."""
    config = EmulatorConfig(
        start_delay=1.5, idle_timeout=60, concurrency=4, allow_unauthenticated=True,
        engine_args=("--num-parallel", "2"),
    )  # fmt: skip
    # SmolLM loaded in the warm engine (Ollama loads a model on a chat without messages).
    httpx.post(f"{engine}/api/chat", json={"model": SMOL, "messages": []}, timeout=60)
    with (
        start_emulator(config) as cold,
        running_app(
            backend_url=engine,
            backend_routes={"gemma": cold.url},
            allowed_models=[SMOL, GEMMA],  # checked without asking the (cold) backend
            rate_limit_per_minute=1000,
        ) as url,
    ):
        job = Client(url, verbose=False).submit(
            *compare_args("Hello", [SMOL, GEMMA], max_tokens=16), api_name="/compare"
        )
        final = tuple(job.result(timeout=120))
        updates = [columns(tuple(u)) for u in job.outputs()]
    warming_while_other_streams = [
        u for u in updates if "warming-banner" in u[1][1] and replies(u[0][0])
    ]
    assert warming_while_other_streams, "Gemma's column should warm while SmolLM answers"
    # Gemma's column named the instance start at some point (on a loaded machine SmolLM's
    # first token may come only once the 1.5 s start is over and Gemma is loading).
    gemma_banners = [html.unescape(str(u[1][1])) for u in updates]
    assert any("Starting a GPU instance" in b for b in gemma_banners), gemma_banners[:3]
    assert not any("warming-banner" in str(u[0][1]) for u in updates), "SmolLM was warm"
    for history, status in columns(final)[:2]:
        assert replies(history) and "tokens/s" in status
