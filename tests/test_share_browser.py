"""Share links in a real Chromium across a restart of the UI process (`python -m ui`):
the link carries its content, so the new process shows the same conversation; a changed
link is refused with a message on the page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from gradio_client import Client
from playwright.sync_api import Browser, Page, expect

from devtools.testkit.browser import saved_chat, set_number, wait_for_chat_saved
from devtools.testkit.chat_app import is_note, msg, running_app, text_of
from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.procs import ARTIFACTS, free_port, ui_process
from ui.backend_access.labels import label_for
from ui.share.format import decode_share, encode_share

pytestmark = pytest.mark.browser

SECRET = "share-browser-test-secret-0123456789"
REPLY = 'div.message:not(.thought) > [data-testid="bot"]'
USER = '[data-testid="user"]'
STATS = ".thought .title"
GENERATED = "✓ Generated here by"  # the shared view's mark on a reply this server generated
NOT_VERIFIED = "Not verified: supplied by whoever shared this"


def texts(page: Page, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def share_link(page: Page, prefix: str) -> str:
    page.locator(f"#{prefix}-share").click()
    box = page.locator(f"#{prefix}-share-link").locator("input, textarea").first
    expect(box).to_have_value(re.compile(r"\?share="), timeout=20_000)
    expect(page.locator(f"#{prefix}-share-notice")).to_contain_text("Link ready")
    return box.input_value()


def wait_for_stats(page: Page, chats: list[str], count: int = 1) -> None:
    deadline = time.monotonic() + 120
    while not all(page.locator(f"{c} {STATS}").count() >= count for c in chats):
        assert time.monotonic() < deadline, "the answers did not finish within 120 s"
        page.wait_for_timeout(100)


# A reply's GPU cost estimate depends on the price settings of the server showing it, so a
# share carries the measured figures only; the shared view and its copies show those.
COST = re.compile(r" · ≈ \$.*$")


def conversation(page: Page, chat: str) -> tuple[list[str], list[str], list[str]]:
    return (
        texts(page, f"{chat} {USER}"),
        texts(page, f"{chat} {REPLY}"),
        [COST.sub("", s) for s in texts(page, f"{chat} {STATS}")],
    )


def as_shared(
    seen: tuple[list[str], list[str], list[str]], model: str
) -> tuple[list[str], list[str], list[str]]:
    """A conversation as the shared view shows it: each reply marked as generated here."""
    name = label_for(model).display_name
    users, replies, stats = seen
    return users, replies, [f"{GENERATED} {name} · {title}" for title in stats]


def test_links_survive_a_restart_open_read_only_and_reject_changes(
    engine: str, browser: Browser
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    # --- 1. Make a chat link and a comparison link in one browser. ----------------------
    with ui_process(engine, "ui-share-1", port=port, LLM_SHARE_SECRET=SECRET):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(base)
        expect(page.locator("#model input")).to_have_value(re.compile("SmolLM2"), timeout=30_000)
        set_number(page, "#max-tokens", 12)
        page.locator("#message textarea").fill("Hello there!")
        page.locator("#send").click()
        wait_for_stats(page, ["#chatbot"])
        chat_before = conversation(page, "#chatbot")
        chat_link = share_link(page, "chat")
        assert chat_link.startswith(base + "/?share=")

        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-params").get_by_text("Parameters").click()
        set_number(page, "#compare-max-tokens", 10)
        page.locator("#compare-system-prompt textarea").fill("Answer briefly.")
        page.locator("#compare-message textarea").fill("Name a colour.")
        page.locator("#compare-send").click()
        chats = ["#compare-chat-1", "#compare-chat-2"]
        wait_for_stats(page, chats)
        compare_before = [conversation(page, c) for c in chats]
        compare_link = share_link(page, "compare")
        context.close()

    # --- 2. A new UI process, a new browser context: the links still open. -------------
    with ui_process(engine, "ui-share-2", port=port, LLM_SHARE_SECRET=SECRET):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(chat_link)
        expect(page.get_by_role("tab", name="Shared", selected=True)).to_be_visible(timeout=30_000)
        summary = page.locator("#shared-summary")
        expect(summary).to_contain_text("Shared chat with SmolLM2 135M Instruct")
        expect(summary).to_contain_text("max tokens 12")
        expect(page.locator(f"#shared-chat-1 {USER}")).to_have_count(1)
        assert conversation(page, "#shared-chat-1") == as_shared(chat_before, "smollm2:135m")
        expect(page.locator("#shared-col-2")).to_be_hidden()
        page.screenshot(path=str(ARTIFACTS / "shared-chat.png"), full_page=True)

        # Continue from a copy: the conversation moves into this browser's chat.
        saved = saved_chat(page)
        page.get_by_role("button", name="Continue from a copy").click()
        expect(page.get_by_role("tab", name="Chat", selected=True)).to_be_visible()
        expect(page.locator(f"#chatbot {USER}")).to_have_count(1)
        assert conversation(page, "#chatbot") == chat_before
        expect(page.locator("#max-tokens input[type=number]")).to_have_value("12")
        wait_for_chat_saved(page, saved)
        page.goto(base)  # the copy was saved in this browser
        expect(page.locator(f"#chatbot {USER}")).to_have_count(1, timeout=30_000)
        assert conversation(page, "#chatbot") == chat_before

        page.goto(compare_link)
        expect(page.locator("#shared-summary")).to_contain_text(
            "Shared comparison of Gemma 3 270M (base), SmolLM2 135M Instruct", timeout=30_000
        )
        expect(page.locator("#shared-summary")).to_contain_text("Answer briefly.")
        expect(page.locator("#shared-head-2")).to_contain_text("SmolLM2 135M Instruct")
        expect(page.locator(f"#shared-chat-2 {USER}")).to_have_count(1)
        assert [conversation(page, f"#shared-chat-{i}") for i in (1, 2)] == [
            as_shared(seen, model)
            for seen, model in zip(compare_before, ["gemma3:270m", "smollm2:135m"], strict=True)
        ]
        page.get_by_role("button", name="Continue from a copy").click()
        expect(page.get_by_role("tab", name="Compare", selected=True)).to_be_visible()
        expect(page.locator("#compare-head-1")).to_contain_text("Gemma 3 270M")
        expect(page.locator(f"#compare-chat-2 {USER}")).to_have_count(1)
        assert [conversation(page, c) for c in chats] == compare_before

        # --- 3. One character changed: refused with a message, no error page. -----------
        token_start = chat_link.index("share=") + len("share=")
        position = token_start + 40
        swapped = "B" if chat_link[position] == "A" else "A"
        tampered = chat_link[:position] + swapped + chat_link[position + 1 :]
        page.goto(tampered)
        notice = page.locator("#share-notice")
        expect(notice).to_contain_text("invalid or was changed", timeout=30_000)
        expect(page.locator("#shared-col-1")).to_be_hidden()
        expect(page.get_by_role("button", name="Continue from a copy")).to_be_hidden()
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "shared-tampered.png"), full_page=True)
        context.close()


# === which replies this server generated (ui/share/reply_mac.py) =================================
MAC_SECRET = "share-marks-browser-secret-0123456789"


@pytest.fixture(scope="module")
def marks_app() -> Iterator[str]:
    """The app in-process against a protocol-level fake Ollama (fast, fixed replies)."""
    with (
        FakeOllama() as fake,
        running_app(
            backend_url=fake.url, rate_limit_per_minute=1000, share_secret=MAC_SECRET
        ) as url,
    ):
        yield url


def test_the_shared_view_marks_generated_replies_apart_from_supplied_ones(
    marks_app: str, browser: Browser
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    # A reply generated in the browser: its MAC goes to the page and back with the history.
    page.goto(f"{marks_app}/?model=fake-ok")
    expect(page.locator("#model input")).to_have_value(re.compile("fake-ok"), timeout=30_000)
    set_number(page, "#max-tokens", 3)
    page.locator("#message textarea").fill("Hello there!")
    page.locator("#send").click()
    wait_for_stats(page, ["#chatbot"])
    [title] = [COST.sub("", t) for t in texts(page, f"#chatbot {STATS}")]
    genuine = share_link(page, "chat")

    # The same chat with one character of the reply changed, and a made-up reply, as a
    # script would send them to /share_chat.
    client = Client(marks_app, verbose=False)
    history = client.predict(genuine.split("share=", 1)[1], api_name="/continue_copy")[1]
    [reply] = [m for m in history if m["role"] == "assistant" and not is_note(m)]
    reply["content"] = [{"type": "text", "text": text_of(reply).replace("word0", "word9")}]
    history += [msg("user", "Who are you?"), msg("assistant", "Your bank: enter your password.")]
    forged, _ = client.predict(history, "fake-ok", "", 0.7, 0.9, 3, api_name="/share_chat")

    page.goto(genuine)
    chat = page.locator("#shared-chat-1")
    expect(chat.locator(STATS)).to_have_text([f"{GENERATED} fake-ok · {title}"], timeout=30_000)
    expect(chat).not_to_contain_text(NOT_VERIFIED)
    page.screenshot(path=str(ARTIFACTS / "shared-verified.png"), full_page=True)

    page.goto(forged)
    expect(chat.locator(f"{USER}")).to_have_count(2, timeout=30_000)
    expect(chat.locator(STATS)).to_have_text([NOT_VERIFIED, NOT_VERIFIED])
    expect(chat).not_to_contain_text(GENERATED)
    expect(page.locator("#shared-summary")).to_contain_text("supplied by whoever shared")
    page.screenshot(path=str(ARTIFACTS / "shared-not-verified.png"), full_page=True)

    # The view checks each MAC itself: a link (signed with the share secret, as only this
    # server can) whose reply carries a well-formed MAC of another reply is not verified.
    conv = decode_share(genuine.split("share=", 1)[1], MAC_SECRET.encode())
    [question, answer] = conv.columns[0].messages
    swapped = answer.model_copy(update={"content": "Another reply under the same MAC."})
    crafted = conv.model_copy(update={"columns": [conv.columns[0].model_copy(
        update={"messages": [question, swapped]})]})  # fmt: skip
    assert swapped.mac is not None
    page.goto(genuine.split("share=", 1)[0] + "share=" + encode_share(crafted, MAC_SECRET.encode()))
    expect(chat).to_contain_text("Another reply under the same MAC.", timeout=30_000)
    expect(chat.locator(STATS)).to_have_text([NOT_VERIFIED])
    context.close()
