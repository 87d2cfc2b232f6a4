"""Screen-reader, keyboard and phone use (issue 17), in a real browser against the real app
and engine: what the hidden live regions say (ui/view/a11y.py), a chat driven by the keyboard
only, and the layout on a 390x844 phone (screenshots in /work/notes/a11y-phone-*.png).
axe-core's checks are in tests/test_accessibility.py."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from devtools.cloudrun import RunningEmulator
from devtools.testkit.browser import REPLIES, STATS, set_max_tokens, set_number
from devtools.testkit.chat_app import running_app
from devtools.testkit.google_fakes import emulator, shared_metadata, wait_until
from devtools.testkit.procs import ARTIFACTS

pytestmark = pytest.mark.browser

POLITE = "#a11y-polite"
SHOTS = Path("/work/notes") if Path("/work/notes").is_dir() else ARTIFACTS
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(backend_url=engine, rate_limit_per_minute=1000) as url:
        yield url


def open_page(browser: Browser, url: str, viewport: dict[str, int] | None = None) -> Page:
    page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900})
    page.goto(url)
    expect(page.locator("#model input")).to_have_value(re.compile("SmolLM2"), timeout=30_000)
    return page


def said(page: Page, pattern: str) -> list[str]:
    """The lines the polite live region received that match `pattern`."""
    lines = page.locator(f"{POLITE} p").all_inner_texts()
    return [line for line in lines if re.search(pattern, line)]


def assert_said_once(page: Page, pattern: str, timeout: float = 30) -> str:
    """`pattern` is said once, and still once a moment later (not per token)."""
    wait_until(lambda: len(said(page, pattern)) >= 1, timeout=timeout, what=pattern)
    page.wait_for_timeout(1_000)
    lines = said(page, pattern)
    assert len(lines) == 1, lines
    return lines[0]


def focus_ring(page: Page) -> tuple[str, float]:
    """The focused element's outline (style, width in px), once its transition is over."""
    page.wait_for_timeout(300)
    style, width = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    return style, width


def focused_id(page: Page) -> str:
    return str(page.evaluate("() => document.activeElement.closest('[id]')?.id || ''"))


def stops_growing(reply: Locator) -> None:
    """The reply's text does not change for a second."""
    before = reply.inner_text()
    reply.page.wait_for_timeout(1_000)
    assert reply.inner_text() == before, "the reply went on after Escape"


def test_keyboard_only_chat(app_url: str, browser: Browser) -> None:
    page = open_page(browser, app_url)
    try:
        set_max_tokens(page, 400)  # long enough to be stopped
        page.locator("#app-title").click()  # start from the top, as a keyboard user does
        for _ in range(12):
            page.keyboard.press("Tab")
            if focused_id(page) == "message":
                break
        assert focused_id(page) == "message", "Tab never reached the message box"
        style, width = focus_ring(page)
        assert style != "none" and width >= 2, f"no visible focus on the box: {style} {width}"
        box = page.locator("#message textarea")
        box.press_sequentially("Tell me a long story", delay=40)  # a person's typing speed
        page.keyboard.press("Shift+Enter")
        box.press_sequentially("about a dragon.", delay=40)
        expect(box).to_have_value("Tell me a long story\nabout a dragon.")
        expect(page.locator("#chatbot [data-testid=user]")).to_have_count(0)  # not sent
        page.keyboard.press("Enter")
        expect(page.locator("#chatbot [data-testid=user]")).to_have_count(1)
        assert focused_id(page) == "message"
        reply = page.locator(REPLIES).first
        expect(reply).not_to_be_empty(timeout=30_000)
        page.keyboard.press("Escape")  # stops the streaming reply
        expect(page.locator(STATS).first).to_contain_text("Stopped", timeout=5_000)
        stops_growing(reply)
        assert_said_once(page, r"^Reply from smollm2:135m stopped after [\d.]+ s\.$")

        # Sent with the Send button (Tab, Enter): the focus comes back to the box.
        # Again a long story: a short answer could end before Escape on a fast machine.
        box.press_sequentially("Another long story, about a knight.", delay=40)
        page.keyboard.press("Tab")
        assert focused_id(page) == "send"
        style, width = focus_ring(page)
        assert style != "none" and width >= 2, f"no visible focus on Send: {style} {width}"
        expect(page.locator("#stop")).to_have_accessible_name("Stop the reply")
        page.keyboard.press("Enter")
        expect(page.locator("#chatbot [data-testid=user]")).to_have_count(2)
        wait_until(lambda: focused_id(page) == "message", timeout=3, what="focus in the box")
        expect(page.locator(REPLIES).nth(1)).not_to_be_empty(timeout=30_000)
        page.keyboard.press("Escape")
        expect(page.locator(STATS).nth(1)).to_contain_text("Stopped", timeout=5_000)
        wait_until(lambda: len(said(page, "stopped")) == 2, timeout=5, what="two stops said")
        expect(page.get_by_role("button", name="Retry the last message")).to_be_visible()

        # Share link: the link box is a disabled input (out of the keyboard's reach), so the
        # button puts the link on the clipboard and says so.
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url)
        share = page.locator("#chat-share")
        expect(share).to_have_accessible_name("Share link: copy a link to this chat")
        share.focus()
        page.keyboard.press("Enter")
        assert_said_once(page, r"^Share link copied to the clipboard\.$", timeout=10)
        link = page.locator("#chat-share-link input").input_value()
        assert link.startswith(app_url) and "share=" in link, link
        assert page.evaluate("navigator.clipboard.readText()") == link
    finally:
        page.close()


def test_compare_and_battle_say_the_end_of_a_turn_once_and_stop_on_escape(
    app_url: str, browser: Browser
) -> None:
    page = open_page(browser, app_url)
    try:
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-params").get_by_text("Parameters").click()
        set_number(page, "#compare-max-tokens", 8)
        page.locator("#compare-message textarea").press_sequentially("Say hi.", delay=30)
        page.keyboard.press("Enter")
        for slot in (1, 2):
            expect(page.locator(f"#compare-status-{slot}")).to_contain_text(
                "s total", timeout=60_000
            )
        line = assert_said_once(page, r"^Answers ended\.")
        assert re.search(r"Gemma 3 270M \(base\) finished: \d+ tokens in [\d.]+ s", line), line
        assert re.search(r"SmolLM2 135M Instruct finished: \d+ tokens in [\d.]+ s", line), line
        expect(page.locator("#compare-stop")).to_have_accessible_name("Stop the answers")

        page.get_by_role("tab", name="Battle").click()
        page.locator("#battle-params").get_by_text("Parameters").click()
        set_number(page, "#battle-max-tokens", 400)
        page.locator("#battle-message textarea").press_sequentially("Tell a story.", delay=30)
        page.keyboard.press("Enter")
        for side in ("a", "b"):
            expect(page.locator(f"#battle-chat-{side} [data-testid=bot]").first).not_to_be_empty(
                timeout=60_000
            )
        page.keyboard.press("Escape")
        for side in ("a", "b"):
            expect(page.locator(f"#battle-status-{side}")).to_have_text("Stopped", timeout=5_000)
        line = assert_said_once(page, r"^Answers ended\. Model A")
        assert line == "Answers ended. Model A stopped; Model B stopped.", line
        for choice, name in [("a", "Vote: A is better (the first answer)"),
                             ("b", "Vote: B is better (the second answer)")]:  # fmt: skip
            expect(page.locator(f"#vote-{choice}")).to_have_accessible_name(name)
    finally:
        page.close()


# --- a cold backend: the Cloud Run emulator (as tests/test_cold_browser.py) ---------------
@pytest.fixture(scope="module")
def cold_emulator() -> Iterator[RunningEmulator]:
    shared_metadata()  # google-auth on both ends talks to the fake metadata server
    emu = emulator(start_delay=4.0, idle_timeout=5.0, concurrency=4, queue_timeout=5)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="module")
def cold_app_url(cold_emulator: RunningEmulator) -> Iterator[str]:
    metadata = shared_metadata()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCE_METADATA_IP", metadata.host)
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        with running_app(
            backend_url=cold_emulator.url,
            auth="google",
            allowed_models=["smollm2:135m"],  # the picker works while the backend is cold
            typical_cold_start=20.0,
            probe_timeout=0.5,
            cold_start_deadline=90.0,
            rate_limit_per_minute=1000,
        ) as url:
            yield url


def test_cold_start_is_said_while_the_banner_shows_and_the_reply_end_once(
    cold_app_url: str, browser: Browser, cold_emulator: RunningEmulator
) -> None:
    wait_until(lambda: cold_emulator.state()["state"] == "cold", timeout=60, what="cold")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(cold_app_url)
    try:
        expect(page.locator("#model input")).to_have_value(re.compile("SmolLM2"), timeout=30_000)
        set_max_tokens(page, 8)
        page.locator("#message textarea").fill("Say hello.")
        page.keyboard.press("Enter")
        banner = page.locator("#chat-banner .warming-banner")
        expect(banner).to_be_visible(timeout=5_000)
        # While the banner counts: the phase it shows was said, politely, and the region
        # was in the page before (a region added with its text is not read).
        phase = banner.locator(".warming-phase").inner_text().rstrip("…")
        wait_until(lambda: bool(said(page, re.escape(phase))), timeout=3, what=phase)
        assert said(page, r"\(usually ~20 s\)"), page.locator(POLITE).inner_text()
        assert page.locator("#a11y-assertive").inner_text() == ""
        assert banner.is_visible(), "the banner should still show"
        expect(page.locator(STATS)).to_have_count(1, timeout=60_000)
        # The counter is not read out: one line per phase, however long it counted.
        lines = page.locator(f"{POLITE} p").all_inner_texts()
        assert not [line for line in lines if re.search(r"\d+ s$", line)], lines
        assert_said_once(page, r"^Reply from smollm2:135m finished: \d+ tokens? in [\d.]+ s\.$")
    finally:
        page.close()


# --- a phone -------------------------------------------------------------------------------
def within_first_screen(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not shown"
    assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (selector, box)
    return box


def assert_stacked(page: Page, columns: list[str], chats: list[str]) -> None:
    """Columns one under the other, each nearly the screen's width, each answer box short
    enough that the next column starts on the same screen."""
    boxes = [page.locator(c).bounding_box() for c in columns]
    for box in boxes:
        assert box is not None and box["width"] >= 0.8 * PHONE["width"], boxes
    for upper, lower in itertools.pairwise(boxes):
        assert upper is not None and lower is not None
        assert lower["y"] >= upper["y"] + upper["height"] - 1, boxes
    for chat in chats:
        box = page.locator(chat).bounding_box()
        assert box is not None and box["height"] <= 0.5 * PHONE["height"], (chat, box)


def test_phone_shows_picker_and_status_first_and_stacks_columns(
    app_url: str, browser: Browser
) -> None:
    page = open_page(browser, app_url, PHONE)
    try:
        SHOTS.mkdir(exist_ok=True)
        status = within_first_screen(page, "#backend-status")
        picker = within_first_screen(page, "#model")
        chat = page.locator("#chatbot").bounding_box()
        assert chat is not None and picker["y"] < chat["y"], "the picker is below the chat"
        assert status["y"] < chat["y"]
        within_first_screen(page, "#message")  # and the message box is still on screen
        page.screenshot(path=str(SHOTS / "a11y-phone-chat.png"))

        page.get_by_role("tab", name="Compare").click()
        within_first_screen(page, "#compare-models")
        assert_stacked(
            page, ["#compare-col-1", "#compare-col-2"], ["#compare-chat-1", "#compare-chat-2"]
        )
        page.screenshot(path=str(SHOTS / "a11y-phone-compare.png"), full_page=True)

        # On a phone the tab row shows the tabs that fit (with the system's fonts: Chat,
        # Compare, Battle); the others sit in the "More tabs" menu, opened by keyboard too.
        page.get_by_role("button", name="More tabs").press("Enter")
        expect(page.locator(".overflow-dropdown button", has_text="Leaderboard")).to_be_visible()
        page.keyboard.press("Escape")
        battle = page.get_by_role("tab", name="Battle")
        if not battle.is_visible():
            page.get_by_role("button", name="More tabs").press("Enter")
            battle = page.locator(".overflow-dropdown button", has_text="Battle")
        battle.click()
        expect(page.locator("#battle-columns")).to_be_visible()
        assert_stacked(
            page, ["#battle-col-a", "#battle-col-b"], ["#battle-chat-a", "#battle-chat-b"]
        )
        page.screenshot(path=str(SHOTS / "a11y-phone-battle.png"), full_page=True)
    finally:
        page.close()
