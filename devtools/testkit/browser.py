"""Debian's Chromium under Playwright, launched the same way by every browser test, and the
page helpers several browser tests (and nothing else) share.

Playwright's own browser download does not work on these machines; Debian's `chromium`
package does (the Makefile installs it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Page, expect, sync_playwright

from ui.pages.chat import BROWSER_STORAGE_KEY

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

# The chat page's replies (stats lines left out) and its stats lines.
REPLIES = '#chatbot div.message:not(.thought) > [data-testid="bot"]'
STATS = "#chatbot .thought .title"


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def set_number(page: Page, selector: str, value: int | float) -> None:
    """Type `value` into the number box of the component `selector`."""
    box = page.locator(f"{selector} input[type=number]")
    deadline = time.monotonic() + 10
    while box.input_value() != str(value):  # a just-opened accordion may re-render
        assert time.monotonic() < deadline, f"could not set {selector} to {value}"
        box.fill(str(value))
        box.blur()
        page.wait_for_timeout(100)
    expect(box).to_have_value(str(value))


def set_max_tokens(page: Page, value: int) -> None:
    """The chat page's "max tokens" setting."""
    set_number(page, "#max-tokens", value)


def send(page: Page, text: str) -> None:
    """Send `text` from the chat page."""
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()


def fight_battle(page: Page, message: str, max_tokens: int) -> None:
    """On an open page: the Battle tab, a reply cap, a prompt typed at human speed, and both
    answers finished ("Done")."""
    page.get_by_role("tab", name="Battle").click()
    page.locator("#battle-params").get_by_text("Parameters").click()
    set_number(page, "#battle-max-tokens", max_tokens)
    page.locator("#battle-message textarea").press_sequentially(message, delay=30)
    page.locator("#battle-send").click()
    for side in ("a", "b"):  # "Done": no figures, they would hint at the model
        expect(page.locator(f"#battle-status-{side}")).to_have_text("Done", timeout=90_000)


def saved_chat(page: Page) -> str | None:
    """The chat page's conversation as saved in this browser (encrypted, so only compared)."""
    return page.evaluate("(key) => localStorage.getItem(key)", BROWSER_STORAGE_KEY)


def wait_for_chat_saved(page: Page, before: str | None, timeout: float = 30) -> None:
    """Until the chat page has saved its conversation again since `before` (`saved_chat`).
    The save runs once a turn has ended (every update of the turn has reached the page by
    then), after Clear and after "Continue from a copy"."""
    page.wait_for_function(
        "([key, before]) => localStorage.getItem(key) !== before",
        arg=[BROWSER_STORAGE_KEY, before],
        timeout=timeout * 1000,
    )


def answered_by_app(page: Page) -> None:
    """A request to this app, sent from the page now, is answered: what the page received
    before has been handled. Not "network idle": the status line keeps refreshing."""
    assert page.evaluate("() => fetch('/config').then(r => r.status)") == 200


def page_wait_until(page: Page, predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; the page's event handlers (page.on) run meanwhile,
    which a plain time.sleep would not let them do."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        page.wait_for_timeout(50)


class QueueStreams:
    """The page's open Gradio queue streams (`/queue/data`). Gradio ends a page's stream
    once none of its queued events is pending, so none open means every event the page
    started has ended and sent all its updates. Attach before the page starts events."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.open = 0
        page.on("request", lambda r: self._count(r.url, 1))
        page.on("requestfinished", lambda r: self._count(r.url, -1))
        page.on("requestfailed", lambda r: self._count(r.url, -1))

    def _count(self, url: str, change: int) -> None:
        if "/queue/data" in url:
            self.open += change

    def wait_until_idle(self, timeout: float = 30) -> None:
        page_wait_until(self.page, lambda: self.open == 0, timeout, "the page's events to end")


def warming_elapsed_s(page: Page, banner: str = "#chat-banner") -> int | None:
    """The seconds the warming banner counts, or None once it is gone. Read in one step: the
    first tokens may end the banner between two Playwright calls."""
    text = page.evaluate(
        "(banner) => document.querySelector(banner + ' .warming-elapsed')?.textContent ?? null",
        banner,
    )
    return int(text.split()[0]) if text else None
