"""The Compare tab in a real Chromium (Playwright), against the real local engine."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from devtools.testkit.browser import QueueStreams, page_wait_until, set_number
from devtools.testkit.chat_app import running_app
from devtools.testkit.procs import ARTIFACTS

pytestmark = pytest.mark.browser

COLUMNS = ("#compare-chat-1", "#compare-chat-2")
REPLY = 'div.message:not(.thought) > [data-testid="bot"]'  # answers, not stats lines
STATS = ".thought .title"
LOAD_FIGURE = re.compile(r"model load \d+\.\d+ s|model already loaded")


@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(backend_url=engine, rate_limit_per_minute=1000, max_tokens_limit=512) as url:
        yield url


def reply_length(page: Page, column: str, index: int = 0) -> int:
    replies = page.locator(f"{column} {REPLY}")
    return len(replies.nth(index).inner_text()) if replies.count() > index else 0


def stats_count(page: Page, column: str) -> int:
    return page.locator(f"{column} {STATS}").count()


def send(page: Page, text: str, max_tokens: int) -> None:
    set_number(page, "#compare-max-tokens", max_tokens)
    page.locator("#compare-message textarea").fill(text)
    page.locator("#compare-send").click()


def test_two_models_stream_side_by_side_show_stats_and_stop_together(
    app_url: str, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    streams = QueueStreams(page)
    try:
        page.goto(app_url)
        page.get_by_role("tab", name="Compare").click()
        # One model per family is preselected: here the engine's two models.
        expect(page.locator("#compare-head-1")).to_contain_text("Gemma 3 270M", timeout=30_000)
        expect(page.locator("#compare-head-2")).to_contain_text("SmolLM2 135M Instruct")
        expect(page.locator("#compare-col-3")).to_be_hidden()
        page.locator("#compare-params").get_by_text("Parameters").click()
        # Greedy decoding: both models' answers to the story prompt below are then known to
        # run to the 400-token cap (checked against the engine), so Stop always finds them
        # still streaming.
        set_number(page, "#compare-temperature", 0)

        # 1. Both answers come with their figures (the first round also loads the models:
        # the status then names the load time).
        send(page, "Name three colours.", max_tokens=24)
        deadline = time.monotonic() + 120
        while not all(stats_count(page, c) for c in COLUMNS):
            assert time.monotonic() < deadline, "no stats after 120 s"
            page.wait_for_timeout(100)
        for slot in (1, 2):
            status = page.locator(f"#compare-status-{slot}")
            for figure in ("s to first token", "tokens/s", "tokens ·", "s total"):
                expect(status).to_contain_text(figure)
            expect(status).to_contain_text(LOAD_FIGURE)
        expect(page.locator("#compare-message textarea")).to_have_value("")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)

        # 2. A follow-up continues each model's conversation. Long answers: both grow at
        # the same time (several sizes seen with both under way), then Stop halts both.
        send(page, "Now write a very long story about a lighthouse keeper.", max_tokens=400)
        seen: tuple[set[int], set[int]] = (set(), set())  # sizes while both are under way
        deadline = time.monotonic() + 90
        while min(len(seen[0]), len(seen[1])) < 2:
            assert time.monotonic() < deadline, f"both answers never grew together: {seen}"
            assert all(stats_count(page, c) == 1 for c in COLUMNS), "an answer finished early"
            sizes = (reply_length(page, COLUMNS[0], 1), reply_length(page, COLUMNS[1], 1))
            if all(sizes):
                seen[0].add(sizes[0])
                seen[1].add(sizes[1])
            page.wait_for_timeout(50)
        page.locator("#compare-stop").click()
        for slot in (1, 2):
            expect(page.locator(f"#compare-status-{slot}")).to_contain_text("Stopped")
        stopped = [page.locator(f"{c} {REPLY}").nth(1).inner_text() for c in COLUMNS]
        streams.wait_until_idle()  # the turn has ended: nothing more can come
        assert [page.locator(f"{c} {REPLY}").nth(1).inner_text() for c in COLUMNS] == stopped
        for column in COLUMNS:
            expect(page.locator(f'{column} [data-testid="user"]')).to_have_count(2)
            expect(page.locator(f"{column} {STATS}").nth(1)).to_contain_text("Stopped")
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
        expect(page.locator("#compare-send")).to_be_enabled()
        page.screenshot(path=str(ARTIFACTS / "compare-stopped.png"), full_page=True)

        # 3. On a phone the columns stack instead of squeezing side by side.
        page.set_viewport_size({"width": 390, "height": 844})

        def stacked() -> bool:
            first = page.locator("#compare-col-1").bounding_box()
            second = page.locator("#compare-col-2").bounding_box()
            return bool(first and second and second["y"] >= first["y"] + first["height"] - 1)

        page_wait_until(page, stacked, 5, "the columns to stack")
        page.screenshot(path=str(ARTIFACTS / "compare-phone.png"), full_page=True)
    finally:
        page.close()
