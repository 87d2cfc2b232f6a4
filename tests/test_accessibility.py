"""WCAG 2 A + AA, checked by axe-core in a real Chromium, on every page in the states people
meet (issue 17): the empty page, the cold-start banner and the backend status while a model
"loads", a reply streaming, a reply with its figures, errors; Chat, Compare, Battle, the
Leaderboard, a shared chat and a shared comparison; Gradio's light and dark themes.

The backend is the protocol-level fake (devtools/testkit/fake_ollama.py): each word of
`fake-held` waits until the test releases it, so the "loading" banner (the fake's /api/ps
lists no model) and a half-written reply stay on the page while they are scanned, however
slow the machine; `fake-ok` answers at once with figures. Every state is scanned in both
themes; the table of what was found is written to test-artifacts/a11y-axe.md."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Literal

import pytest
from playwright.sync_api import Browser, Page, expect

from devtools.testkit.a11y import Violation, axe_violations, describe, summary, theme
from devtools.testkit.browser import set_number
from devtools.testkit.chat_app import running_app
from devtools.testkit.fake_ollama import HELD, HeldOllama
from devtools.testkit.procs import ARTIFACTS, refusing_url

pytestmark = pytest.mark.browser

MAX_CHARS = 200  # LLM_MAX_MESSAGE_CHARS here: a longer message is refused with an error
SECRET = "accessibility-test-share-secret-0123456789"
REPLY = 'div.message:not(.thought) > [data-testid="bot"]'
STATS = ".thought .title"
BANNER = ".warming-banner"
STATUS = "#backend-status .backend-status"
THEMES: tuple[Literal["light", "dark"], ...] = ("light", "dark")

# (page, state, theme) -> what axe found; written out as a table when the module ends.
FOUND: dict[tuple[str, str, str], list[Violation]] = {}
SCAN_S: dict[tuple[str, str, str], float] = {}  # how long each scan took


@pytest.fixture(scope="module")
def fake() -> Iterator[HeldOllama]:
    backend = HeldOllama()
    with backend:
        yield backend


@pytest.fixture(scope="module")
def app_url(fake: HeldOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    votes = tmp_path_factory.mktemp("a11y") / "votes.sqlite3"
    with (
        running_app(
            backend_url=fake.url,
            allowed_models=["fake-ok", HELD],
            share_secret=SECRET,
            votes=f"sqlite:///{votes}",
            max_message_chars=MAX_CHARS,
            probe_timeout=0.5,
        ) as url,
    ):
        yield url
    write_table()


def write_table() -> None:
    if not FOUND:
        return
    lines = ["| page | state | theme | violations (nodes) | scan s |", "|---|---|---|---|---|"]
    for key, found in FOUND.items():
        lines.append(f"| {' | '.join(key)} | {summary(found)} | {SCAN_S.get(key, 0):.1f} |")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "a11y-axe.md").write_text("\n".join(lines) + "\n")


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="light")
    page.goto(url)
    return page


def settle(page: Page) -> None:
    """Wait for the status line's first refresh, which may refill the pickers (and so
    replace a model picked before it: the status line's race, not what is tested here)."""
    settled = page.locator('#backend-status .backend-status[data-provisional-pickers="false"]')
    expect(settled).to_have_count(1, timeout=30_000)


def scan(page: Page, name: str, state: str, lasting: Callable[[], bool] | None = None) -> None:
    """Scan the page as it is in the light and the dark theme; record what was found.
    `lasting` says whether a passing state (the banner, a stream) is still there: it must
    be after both scans, or they may have seen the next state instead."""
    for mode in THEMES:
        started = time.monotonic()
        theme(page, mode)
        FOUND[(name, state, mode)] = axe_violations(page)
        SCAN_S[(name, state, mode)] = time.monotonic() - started
    theme(page, "light")
    assert lasting is None or lasting(), f"{name} / {state} ended during its scans"


def assert_clean(name: str) -> None:
    """Fail with every violation of every scanned state of page `name`."""
    failures = [
        f"{page} / {state} / {mode}:\n{describe(found)}"
        for (page, state, mode), found in FOUND.items()
        if page == name and found
    ]
    assert not failures, "axe (WCAG 2 A/AA) violations:\n" + "\n".join(failures)


def share_link(page: Page, prefix: str) -> str:
    page.locator(f"#{prefix}-share").click()
    box = page.locator(f"#{prefix}-share-link").locator("input, textarea").first
    expect(box).to_have_value(re.compile(r"\?share="), timeout=20_000)
    return box.input_value()


def scan_shared(browser: Browser, link: str, name: str) -> None:
    page = open_page(browser, link)
    try:
        expect(page.locator("#shared-continue")).to_be_visible(timeout=20_000)
        expect(page.locator(f"#shared-chat-1 {REPLY}").first).to_be_visible()
        scan(page, name, "opened")
    finally:
        page.close()


def test_chat_and_shared_chat(app_url: str, fake: HeldOllama, browser: Browser) -> None:
    page = open_page(browser, app_url)
    try:
        settle(page)
        page.locator("#model input").click()
        page.get_by_role("option", name=re.compile(f"^{HELD}")).click()
        expect(page.locator("#model input")).to_have_value(re.compile(f"^{HELD}"))
        expect(page.locator(STATUS)).to_be_visible()
        scan(page, "Chat", "empty")

        set_number(page, "#max-tokens", 2)
        page.locator("#message textarea").fill("Say hello.")
        page.locator("#send").click()
        expect(page.locator(f"#chat-banner {BANNER}")).to_be_visible(timeout=5_000)
        expect(page.locator(STATUS)).to_be_visible()
        banner = page.locator(f"#chat-banner {BANNER}")
        scan(page, "Chat", "cold banner + status", banner.is_visible)
        fake.release()
        expect(page.locator(f"#chatbot {REPLY}")).to_contain_text("word0", timeout=10_000)
        stats = page.locator(f"#chatbot {STATS}")
        scan(page, "Chat", "streaming", lambda: stats.count() == 0)
        fake.release()
        expect(page.locator(f"#chatbot {STATS}")).to_have_count(1, timeout=15_000)
        scan(page, "Chat", "reply + figures")

        scan_shared(browser, share_link(page, "chat"), "Shared chat")

        page.locator("#message textarea").fill("x" * (MAX_CHARS + 1))
        page.locator("#send").click()
        expect(page.locator("#chat-banner .chat-banner-error")).to_be_visible(timeout=10_000)
        scan(page, "Chat", "message too long")
        assert_clean("Chat")
        assert_clean("Shared chat")

        # The note's title is its one toggle (ui/view/render.py NOTE_TOGGLE_JS): its arrow, a
        # click and Enter open and close it, and it says whether it is open.
        note = page.locator(f"#chatbot {STATS}")
        expect(note).to_have_attribute("aria-expanded", "false")
        note.locator(".arrow").click()
        expect(note).to_have_attribute("aria-expanded", "true")
        note.focus()
        page.keyboard.press("Enter")
        expect(note).to_have_attribute("aria-expanded", "false")
    finally:
        page.close()


def test_compare_and_shared_comparison(app_url: str, fake: HeldOllama, browser: Browser) -> None:
    page = open_page(browser, f"{app_url}/?compare=fake-ok,{HELD}")
    try:
        settle(page)
        expect(page.locator("#compare-columns")).to_contain_text(HELD)
        held = 1 if HELD in page.locator("#compare-head-1").inner_text() else 2
        ok = 3 - held  # the picker keeps its choices' order, not the link's
        expect(page.locator(f"#compare-head-{ok}")).to_contain_text("fake-ok")
        scan(page, "Compare", "empty")

        page.locator("#compare-params").get_by_text("Parameters").click()
        set_number(page, "#compare-max-tokens", 2)
        page.locator("#compare-message textarea").fill("Say hello.")
        page.locator("#compare-send").click()
        banner = page.locator(f"#compare-status-{held} {BANNER}")
        expect(banner).to_be_visible(timeout=5_000)
        expect(page.locator(f"#compare-chat-{ok} {STATS}")).to_have_count(1, timeout=10_000)
        scan(page, "Compare", "cold banner + one reply", banner.is_visible)
        fake.release()
        expect(page.locator(f"#compare-chat-{held} {REPLY}")).to_contain_text("word0")
        stats = page.locator(f"#compare-chat-{held} {STATS}")
        scan(page, "Compare", "streaming", lambda: stats.count() == 0)
        fake.release()
        expect(stats).to_have_count(1, timeout=10_000)
        scan(page, "Compare", "replies + figures")

        scan_shared(browser, share_link(page, "compare"), "Shared comparison")

        page.locator("#compare-message textarea").fill("x" * (MAX_CHARS + 1))
        page.locator("#compare-send").click()
        expect(page.locator("#compare-banner .chat-banner-error")).to_be_visible(timeout=10_000)
        scan(page, "Compare", "message too long")
    finally:
        page.close()
    assert_clean("Compare")
    assert_clean("Shared comparison")


def test_battle_and_leaderboard(app_url: str, fake: HeldOllama, browser: Browser) -> None:
    page = open_page(browser, app_url)
    try:
        page.get_by_role("tab", name="Battle").click()
        expect(page.locator("#battle-send")).to_be_visible(timeout=30_000)
        scan(page, "Battle", "empty")
        page.get_by_role("tab", name="Leaderboard").click()
        expect(page.locator("#leaderboard")).not_to_be_empty(timeout=10_000)
        scan(page, "Leaderboard", "no votes yet")
        page.get_by_role("tab", name="Battle").click()

        page.locator("#battle-params").get_by_text("Parameters").click()
        set_number(page, "#battle-max-tokens", 2)
        page.locator("#battle-message textarea").fill("Say hello.")
        page.locator("#battle-send").click()
        page.locator("#vote-tie").click()  # too early: the answers are not complete
        expect(page.locator("#battle-banner .chat-banner-error")).to_be_visible(timeout=10_000)
        answering = page.locator("#battle-status-a, #battle-status-b").filter(has_text="Done")
        scan(page, "Battle", "answering + early vote refused", lambda: answering.count() < 2)
        fake.release(2)
        for side in ("a", "b"):
            expect(page.locator(f"#battle-status-{side}")).to_have_text("Done", timeout=20_000)
        scan(page, "Battle", "both replies")
        page.locator("#vote-tie").click()
        expect(page.locator("#battle-head-a .compare-meta")).to_be_visible(timeout=10_000)
        scan(page, "Battle", "voted (names shown)")

        page.get_by_role("tab", name="Leaderboard").click()
        expect(page.locator("#leaderboard")).to_contain_text("fake", timeout=10_000)
        scan(page, "Leaderboard", "one vote")
    finally:
        page.close()
    assert_clean("Battle")
    assert_clean("Leaderboard")


def test_unreachable_backend(browser: Browser) -> None:
    """The status line's alert and the chat's error when the backend refuses connections."""
    with refusing_url() as backend, running_app(backend_url=backend) as url:
        page = open_page(browser, url)
        try:
            expect(page.locator(STATUS)).to_have_attribute(
                "data-state", "unreachable", timeout=20_000
            )
            page.locator("#message textarea").fill("Hello?")
            page.locator("#send").click()
            expect(page.locator("#chatbot")).to_contain_text("cannot be reached", timeout=30_000)
            scan(page, "Chat (backend refused)", "status alert + error note")
        finally:
            page.close()
    assert_clean("Chat (backend refused)")


def test_dark_theme_from_the_url_is_the_theme_scanned(app_url: str, browser: Browser) -> None:
    """`?__theme=dark` sets what `theme(page, "dark")` sets, so the scans above cover it."""
    page = open_page(browser, f"{app_url}/?__theme=dark")
    try:
        expect(page.locator("body")).to_have_class(re.compile(r"\bdark\b"), timeout=30_000)
        expect(page.locator(STATUS)).to_be_visible()
        started = time.monotonic()
        found = axe_violations(page)
        key = ("Chat (?__theme=dark)", "empty", "dark")
        FOUND[key], SCAN_S[key] = found, time.monotonic() - started
        assert not found, describe(found)
    finally:
        page.close()
