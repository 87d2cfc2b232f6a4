"""The chat page in a real Chromium (Playwright), against the real local engine."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from devtools.testkit.browser import (
    REPLIES,
    STATS,
    answered_by_app,
    saved_chat,
    send,
    set_max_tokens,
    set_number,
    wait_for_chat_saved,
)
from devtools.testkit.chat_app import running_app
from devtools.testkit.procs import ARTIFACTS

pytestmark = pytest.mark.browser

SMOLLM_LABEL = "SmolLM2 135M Instruct — Llama · 135M"
GEMMA_LABEL = "Gemma 3 270M (base) — Gemma · 270M · base model, not chat-tuned"


@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(backend_url=engine, rate_limit_per_minute=1000, max_tokens_limit=512) as url:
        yield url


def fn_index(app_url: str, api_name: str) -> int:
    """The number Gradio's page sends for the event named `api_name`."""
    dependencies = httpx.get(app_url + "/config", timeout=10).json()["dependencies"]
    return next(i for i, d in enumerate(dependencies) if d.get("api_name") == api_name)


def pick_model(page: Page, label: str) -> None:
    page.locator("#model input").click()
    page.get_by_role("option", name=label).click()
    expect(page.locator("#model input")).to_have_value(label)


def reply_lengths_until_stats(page: Page, reply_index: int, stats_count: int) -> list[int]:
    """Sample the length of reply `reply_index` until `stats_count` stats lines exist."""
    lengths: list[int] = []
    deadline = time.monotonic() + 120
    while page.locator(STATS).count() < stats_count:
        assert time.monotonic() < deadline, "no stats line after 120 s"
        replies = page.locator(REPLIES)
        if replies.count() > reply_index:
            lengths.append(len(replies.nth(reply_index).inner_text()))
        page.wait_for_timeout(40)
    return lengths


def test_chat_stream_stop_undo_reload_and_edit(app_url: str, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(app_url)
        # The picker is filled from the engine's models, with friendly labels.
        expect(page.locator("#model input")).to_have_value(SMOLLM_LABEL, timeout=30_000)
        pick_model(page, GEMMA_LABEL)
        expect(page.locator("#model-info")).to_contain_text("not chat-tuned")
        pick_model(page, SMOLLM_LABEL)
        expect(page.locator("#model-info")).to_contain_text("SmolLM2-135M-Instruct")

        # 1. A reply grows token by token and gets a stats line.
        set_max_tokens(page, 40)
        send(page, "Tell me a short story about a lighthouse.")
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(1)
        expect(page.locator("#message textarea")).to_have_value("")
        lengths = reply_lengths_until_stats(page, reply_index=0, stats_count=1)
        grown = sorted({n for n in lengths if n > 0})
        assert len(grown) >= 3, f"the reply should grow in steps, saw lengths {lengths}"
        stats = page.locator(STATS).first.inner_text()
        for figure in ("s to first token", "tokens/s", "s total"):
            assert figure in stats

        # A rejected message stays in the box, the reason shows above the chat, and the
        # conversation stays visible. Stop with nothing running does nothing visible.
        too_long = "x" * 8001
        send(page, too_long)
        expect(page.locator("#chat-banner")).to_contain_text("the limit is 8,000")
        expect(page.locator("#message textarea")).to_have_value(too_long)
        stop = fn_index(app_url, "stop")
        with page.expect_response(
            lambda r: "/run/" in r.url and (r.request.post_data_json or {}).get("fn_index") == stop
        ) as stopped:
            page.locator("#stop").click()
        stopped.value.finished()  # its answer (an error, silent) is in...
        answered_by_app(page)  # ... and the page has handled it
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
        expect(page.locator(REPLIES)).to_have_count(1)

        # 2. Stop in the middle of a long reply: it stops growing and keeps its text.
        set_max_tokens(page, 500)
        # Greedy: a sampled reply is sometimes short enough to end before Stop is pressed.
        set_number(page, "#temperature", 0)
        send(page, "Write a very long story about a castle and its many kings.")
        replies = page.locator(REPLIES)
        expect(replies).to_have_count(2, timeout=60_000)
        deadline = time.monotonic() + 60
        while len(replies.nth(1).inner_text()) < 20:
            assert time.monotonic() < deadline, "the second reply did not start"
            page.wait_for_timeout(40)
        saved = saved_chat(page)
        page.locator("#stop").click()
        expect(page.locator(STATS)).to_have_count(2, timeout=30_000)  # the turn's last update
        expect(page.locator(STATS).nth(1)).to_contain_text("Stopped")
        stopped_text = replies.nth(1).inner_text()
        wait_for_chat_saved(page, saved)  # the turn has ended: nothing more can come
        assert replies.nth(1).inner_text() == stopped_text, "the reply kept growing after stop"
        assert stopped_text.strip(), "the partial reply stays after stop"
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
        expect(page.locator("#send")).to_be_enabled()
        expect(page.locator("#chat-banner")).to_be_hidden()  # cleared by the accepted message
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat.png"))

        # 3. Undo gives the last message back for editing.
        page.get_by_role("button", name="Undo").last.click()
        expect(page.locator("#message textarea")).to_have_value(
            "Write a very long story about a castle and its many kings."
        )
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(1)

        # 4. The conversation lives in the browser: a reload brings it back.
        page.reload()
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(1, timeout=30_000)
        expect(page.locator('#chatbot [data-testid="user"]')).to_contain_text("lighthouse")
        expect(page.locator(STATS)).to_have_count(1)

        # 5. Editing a sent message replaces it and what followed with a new reply.
        old_reply = page.locator(REPLIES).first.inner_text()
        set_max_tokens(page, 12)
        page.get_by_role("button", name="Edit").first.click()
        page.locator("#chatbot textarea.edit-textarea").fill("Tell me about cats.")
        page.get_by_role("button", name="Submit").click()
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_text(["Tell me about cats."])
        expect(page.locator(STATS)).to_have_count(0, timeout=10_000)  # the old reply went
        expect(page.locator(STATS)).to_have_count(1, timeout=120_000)  # the new one is done
        expect(page.locator(REPLIES)).to_have_count(1)
        assert page.locator(REPLIES).first.inner_text() != old_reply

        # 6. Clear empties the chat, also for the next visit.
        saved = saved_chat(page)
        page.get_by_role("button", name="Clear").click()
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(0)
        wait_for_chat_saved(page, saved)
        page.reload()
        expect(page.locator("#model input")).to_have_value(SMOLLM_LABEL, timeout=30_000)
        expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(0)
    finally:
        page.close()
