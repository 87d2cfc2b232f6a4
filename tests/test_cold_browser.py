"""The cold start as a person sees it: a real browser, the app with Google auth on, and the
Cloud Run emulator (ID tokens from the fake metadata server, scale to zero, start delay)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from devtools.cloudrun import RunningEmulator
from devtools.testkit import google_fakes
from devtools.testkit.browser import REPLIES, STATS, send, set_max_tokens, warming_elapsed_s
from devtools.testkit.google_fakes import (
    chat_posts,
    cold_start_app,
    scaled_to_zero,
    wait_until,
)
from devtools.testkit.procs import ARTIFACTS

pytestmark = pytest.mark.browser

START_DELAY = 4.0
IDLE = 5.0


@pytest.fixture(scope="module")
def cold_emulator() -> Iterator[RunningEmulator]:
    with google_fakes.cold_emulator(start_delay=START_DELAY, idle_timeout=IDLE) as emu:
        yield emu


@pytest.fixture(scope="module")
def app_url(cold_emulator: RunningEmulator) -> Iterator[str]:
    # An allow-list: the picker works while the backend is cold.
    with cold_start_app(cold_emulator, allowed_models=["smollm2:135m"]) as url:
        yield url


def open_chat(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    expect(page.locator("#model input")).to_have_value(re.compile("SmolLM2"), timeout=30_000)
    set_max_tokens(page, 8)
    return page


def test_cold_start_banner_counts_then_gives_way_to_tokens(
    app_url: str, browser: Browser, cold_emulator: RunningEmulator
) -> None:
    scaled_to_zero(cold_emulator)
    posts_before = chat_posts(cold_emulator)
    page = open_chat(browser, app_url)  # page load pre-warms: the instance starts now
    try:
        send(page, "Say hello.")
        banner = page.locator("#chat-banner .warming-banner")
        expect(banner).to_be_visible(timeout=5_000)
        expect(banner).to_have_attribute("data-phase", re.compile("starting|loading"))
        expect(banner).to_contain_text("usually ~20 s")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "cold-start.png"))
        # The elapsed seconds count up while the instance starts.
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while banner.count() and banner.is_visible() and time.monotonic() < deadline:
            if (elapsed := warming_elapsed_s(page)) is not None:
                seen.add(elapsed)
            page.wait_for_timeout(200)
        assert len(seen) >= 3, f"elapsed seconds should count up, saw {sorted(seen)}"
        # Tokens arrived: the banner is gone and the reply is there, once.
        expect(page.locator(STATS)).to_have_count(1, timeout=60_000)
        expect(page.locator("#chat-banner .warming-banner")).to_have_count(0)
        expect(page.locator(REPLIES)).to_have_count(1)
        assert page.locator(REPLIES).first.inner_text().strip()
        # One load-only request from the page-load pre-warm, and the message exactly once.
        assert chat_posts(cold_emulator) - posts_before == 2
    finally:
        page.close()


def test_prewarm_hides_the_cold_start_from_a_user_who_types(
    app_url: str, browser: Browser, cold_emulator: RunningEmulator
) -> None:
    scaled_to_zero(cold_emulator)
    posts_before = chat_posts(cold_emulator)
    page = open_chat(browser, app_url)
    try:
        # The user "types" while the page-load pre-warm starts the instance and loads the model.
        wait_until(
            lambda: (
                chat_posts(cold_emulator) > posts_before and cold_emulator.state()["in_flight"] == 0
            ),
            timeout=60,
            what="the pre-warm load to finish",
        )
        send(page, "Say hello.")
        saw_banner = False
        deadline = time.monotonic() + 60
        while page.locator(STATS).count() < 1:
            assert time.monotonic() < deadline, "no reply"
            saw_banner |= page.locator("#chat-banner .warming-banner").count() > 0
            page.wait_for_timeout(30)
        assert not saw_banner, "a pre-warmed backend should not show the warming banner"
        stats = page.locator(STATS).first.inner_text()
        assert "model load" not in stats  # the model was already in memory
        assert cold_emulator.state()["starts"] >= 2
    finally:
        page.close()
