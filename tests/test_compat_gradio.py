"""The Gradio internals the app relies on (ui/compat/gradio_internals.py), pinned against the
Gradio in uv.lock: the queue's events by id, Gradio's reading of a request's origin, and the
DOM classes our CSS and page scripts select on, in a real Chromium. Each failure names the
Gradio version and what changed, so an upgrade that breaks one says where to look."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gradio as gr
import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from devtools.testkit.browser import send
from devtools.testkit.chat_app import running_app
from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.procs import free_port
from ui.compat.gradio_internals import (
    CHATBOT_CLEAR_BUTTON,
    COLUMN,
    FORM,
    NOTE_ARROW_BUTTON,
    NOTE_OPEN_CLASS,
    NOTE_TITLE,
    PROSE,
    request_origin,
    session_of_queued_event,
    upload_folder,
)

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"
LOCKED = re.search(r'name = "gradio"\nversion = "([^"]+)"', LOCK.read_text())
GRADIO = f"gradio {gr.__version__} (uv.lock pins {LOCKED.group(1) if LOCKED else '?'})"


def changed(what: str) -> str:
    return f"{GRADIO}: {what}. Update ui/compat/gradio_internals.py to match."


# === the queue's events (ui/web/event_streams.py) ===============================================
SEEN_APPS: list[Any] = []  # each request's scope["app"], which ui/web/event_streams.py reads


class RecordApp:
    """ASGI middleware that keeps each request's scope["app"] in SEEN_APPS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            SEEN_APPS.append(scope["app"])
        await self.app(scope, receive, send)


@pytest.fixture()
def waiting_app() -> Iterator[str]:
    """A queued Gradio app whose one endpoint, `wait`, runs until the test ends."""
    release = threading.Event()

    def wait(text: str) -> str:
        release.wait(timeout=60)
        return text

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(wait, box, box, api_name="wait")
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        app_kwargs={"middleware": [Middleware(RecordApp)]},
    )
    try:
        assert demo.local_url
        yield demo.local_url.rstrip("/")
    finally:
        release.set()
        demo.close()


def join(url: str, **body: Any) -> str:
    """Start `wait` through Gradio's REST API; its event id."""
    answer = httpx.post(f"{url}/gradio_api/call/wait", json={"data": ["hi"], **body}, timeout=10)
    assert answer.status_code == 200, changed(f"POST /gradio_api/call/wait said {answer.text}")
    return str(answer.json()["event_id"])


def test_the_queue_names_the_session_of_a_queued_or_running_event(waiting_app: str) -> None:
    running = join(waiting_app, session_hash="compat-session")
    queued = join(waiting_app)  # no session of its own; waits for the first (one at a time)
    app = SEEN_APPS[-1]
    try:
        sessions = (
            session_of_queued_event(app, running),
            session_of_queued_event(app, queued),
            session_of_queued_event(app, "no-such-event"),
        )
    except Exception as exc:
        pytest.fail(
            changed(
                'scope["app"].get_blocks()._queue.event_ids_to_events[id].session_hash '
                f"no longer finds an event's session ({exc!r})"
            )
        )
    assert sessions[0] == "compat-session", changed(f"a running event's session is {sessions[0]}")
    assert sessions[1] == queued, changed(
        f"an event sent without a session no longer has its own id as session ({sessions[1]})"
    )
    assert sessions[2] is None, changed("an unknown event id finds a session")


# === the request's origin (ui/share/service.py) ===============================================
def request_to(url: str, headers: dict[str, str] | None = None) -> Request:
    """The Starlette request a browser's GET of `url` makes (what gr.Request.request is)."""
    parts = urlsplit(url)
    raw_headers = [(b"host", parts.netloc.encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": parts.scheme,
            "server": (parts.hostname, parts.port or 80),
            "path": parts.path,
            "root_path": "",
            "query_string": parts.query.encode(),
            "headers": raw_headers,
        }
    )


ROUTE = "/gradio_api/queue/join"  # what ui/share/service.py cuts off: the path from /gradio_api/


@pytest.mark.parametrize(
    ("url", "headers", "origin"),
    [
        (f"http://127.0.0.1:7860{ROUTE}", {}, "http://127.0.0.1:7860"),
        (f"http://127.0.0.1:7860{ROUTE}?session_hash=abc", {}, "http://127.0.0.1:7860"),
        (f"http://10.0.0.5:8080/chat{ROUTE}", {}, "http://10.0.0.5:8080/chat"),
        (
            f"http://10.0.0.5:8080{ROUTE}",
            {"X-Forwarded-Host": "chat.example.com", "X-Forwarded-Proto": "https"},
            "https://chat.example.com",
        ),
    ],
)
def test_gradio_reads_the_origin_of_a_request(
    url: str, headers: dict[str, str], origin: str
) -> None:
    try:
        found = request_origin(request_to(url, headers), ROUTE)
    except Exception as exc:
        pytest.fail(changed(f"gradio.route_utils.get_request_origin(request, route): {exc!r}"))
    assert found == origin, changed(f"the origin of GET {url} {headers} is {found}, not {origin}")


def test_gradio_keeps_its_files_in_the_upload_folder(tmp_path: Path) -> None:
    """ui/pages/export.py reads and writes file parts there: GRADIO_TEMP_DIR, else
    <tmp>/gradio, is where a Blocks caches the files it serves (`GRADIO_CACHE`)."""
    found = upload_folder()
    with gr.Blocks() as blocks:
        pass
    assert found == blocks.GRADIO_CACHE, changed(f"Blocks cache {blocks.GRADIO_CACHE}, not {found}")


# === the DOM our CSS and scripts select on (ui/view/render.py), in Chromium ======================
@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    with FakeOllama() as fake, running_app(backend_url=fake.url, allowed_models=["fake-ok"]) as url:
        yield url


def count(page: Page, selector: str) -> int:
    return page.locator(selector).count()


@pytest.mark.browser
def test_the_page_has_the_classes_our_css_and_scripts_select(
    app_url: str, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(app_url)
        expect(page.locator("#model input")).to_have_value(re.compile("^fake-ok"))
        empty_banner = f"#chat-banner:has({PROSE}:empty)"
        assert count(page, empty_banner) == 1, changed(
            f"an empty gr.HTML's content is no empty {PROSE} element"
        )
        assert count(page, f"#chat-side > {FORM} > #model") == 1, changed(
            f"a column's form components are not in a {FORM} box"
        )

        send(page, "Say hello.")
        # The reply's figures note, "… s total", found by its text: whatever Gradio calls it.
        expect(page.locator("#chatbot")).to_contain_text(" s total", timeout=30_000)
        title = page.locator(f"#chatbot {NOTE_TITLE}")
        assert count(page, f'#chatbot {NOTE_TITLE}[role="button"]') == 1, changed(
            f"a Chatbot note's title is no {NOTE_TITLE} with role=button"
        )
        assert title.locator(NOTE_ARROW_BUTTON).count() == 1, changed(
            f"a Chatbot note's title holds no {NOTE_ARROW_BUTTON}"
        )
        opened = re.compile(rf"(^|\s){NOTE_OPEN_CLASS}(\s|$)")
        expect(title).not_to_have_class(opened)
        title.click()
        try:
            expect(title).to_have_class(opened, timeout=5_000)
            title.click()
            expect(title).not_to_have_class(opened, timeout=5_000)
        except AssertionError as exc:
            pytest.fail(changed(f"an open note's title has no class {NOTE_OPEN_CLASS} ({exc})"))
        assert count(page, f"#chatbot {CHATBOT_CLEAR_BUTTON}") == 1, changed(
            f"a Chatbot with messages has no {CHATBOT_CLEAR_BUTTON}"
        )

        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-columns")).to_be_visible()
        assert count(page, f"#compare-columns > {COLUMN}") >= 2, changed(
            f"a gr.Column in a gr.Row is no {COLUMN}"
        )
    finally:
        page.close()
