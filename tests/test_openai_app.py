"""The app with an OpenAI-compatible backend: llama-cpp-python's own server (smollm2, the
llama family, routed `llama=openai+URL`) next to the real engine (Ollama's API, gemma), so
Chat, Compare and Battle each talk to both kinds at once; and a page whose status line
says which setting to change when the backend speaks the other API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gradio_client import Client
from playwright.sync_api import Browser, expect

from devtools.testkit.browser import STATS, fight_battle, send, set_max_tokens, set_number
from devtools.testkit.chat_app import (
    chat,
    eval_count,
    is_note,
    last_note,
    note_title,
    replies,
    running_app,
)

SMOL, GEMMA = "smollm2:135m", "gemma3:270m"
COMPARE_STATS = ".thought .title"


@pytest.fixture(scope="module")
def app_url(engine: str, llama_server: str) -> Iterator[str]:
    with running_app(
        backend_url=engine,
        backend_routes=f"llama=openai+{llama_server}",
        rate_limit_per_minute=1000,
        max_tokens_limit=512,
    ) as url:
        yield url


def test_chat_through_an_openai_route_has_its_figures(client: Client) -> None:
    _, history, _ = chat(client, "Say hello.", model=SMOL, temperature=0.0, max_tokens=8)
    assert replies(history) and replies(history)[0].strip()
    note = last_note(history)
    title = note_title(note)
    # The server sends no usage: 8 pieces of the stream, capped by max_tokens; the UI's
    # own clock gives the first token and tokens/s; there is no load figure to show.
    assert eval_count(note) == 8
    for figure in ("s to first token", "tokens/s", "s total"):
        assert figure in title, title
    assert "model load" not in title and "already loaded" not in title


def test_compare_streams_both_kinds_side_by_side(client: Client) -> None:
    outputs = client.predict("Name a colour.", [SMOL, GEMMA], "", 0.0, 6, [], [], [],
                             api_name="/compare")  # fmt: skip
    histories = [outputs[i] for i in (2, 4)]
    for history in histories:
        answers = [m for m in history if m["role"] == "assistant" and not is_note(m)]
        assert answers, history
        assert eval_count(last_note(history)) > 0


def test_a_backend_that_speaks_the_other_api_gets_one_plain_status_line(
    llama_server: str, browser: Browser
) -> None:
    with running_app(backend_url=llama_server) as url:  # LLM_BACKEND_API left at ollama
        page = browser.new_page()
        try:
            page.goto(url)
            status = page.locator("#backend-status .backend-status")
            expect(status).to_contain_text(
                "speaks the OpenAI API, but this app is set up to talk to it with Ollama's "
                "API: set LLM_BACKEND_API=openai.",
                timeout=30_000,
            )
            assert "http" not in status.inner_text()  # no address reaches the page
        finally:
            page.close()


@pytest.mark.browser
def test_chat_compare_and_battle_in_chromium(app_url: str, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(app_url)
        # Chat: smollm2 is served by llama-cpp-python's server.
        expect(page.locator("#model input")).to_have_value(
            "SmolLM2 135M Instruct — Llama · 135M", timeout=30_000
        )
        set_max_tokens(page, 12)
        send(page, "Say hello.")
        expect(page.locator(STATS).first).to_contain_text("tokens/s", timeout=60_000)
        expect(page.locator(STATS).first).to_contain_text("s to first token")

        # Compare: one model per family is preselected, gemma (engine) and smollm2.
        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-head-2")).to_contain_text("SmolLM2", timeout=30_000)
        page.locator("#compare-params").get_by_text("Parameters").click()
        set_number(page, "#compare-max-tokens", 12)
        page.locator("#compare-message textarea").fill("Name a colour.")
        page.locator("#compare-send").click()
        for column in ("#compare-chat-1", "#compare-chat-2"):
            expect(page.locator(f"{column} {COMPARE_STATS}")).to_contain_text(
                "tokens/s", timeout=90_000
            )

        # Battle: the two models, one of each kind, both answer.
        fight_battle(page, "Name a fruit.", max_tokens=8)
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    finally:
        page.close()
