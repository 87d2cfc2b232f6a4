"""Security of the public UI: secrets stay on the server, Ollama's management API is out of
reach, and responses carry headers fit for a public demo.

The UI runs as its real entry point (`python -m ui`, its own process, its log captured)
with LLM_AUTH=google against the Cloud Run emulator (IAM on), which checks the Google ID
tokens the UI gets from the fake metadata server, in front of the real engine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import gradio as gr
import httpx
import pytest
from gradio_client import Client

from devtools.cloudrun import RunningEmulator
from devtools.fake_metadata import FakeMetadataServer
from devtools.testkit.chat_app import chat_args, eval_count, last_note, running_app
from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.google_fakes import emulator, shared_metadata, wait_until
from devtools.testkit.procs import Proc, free_port, wait_http
from ui.turn.warming import WARM_UP_MESSAGES

pytestmark = pytest.mark.timeout(240)

SHARE_SECRET = "share-key-for-security-test-7f3a9c2e5b1d"
# A JWT (the ID token's format): three base64url parts, the first two JSON objects.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
# What the UI may ask a model backend for: reading and chatting, never managing models.
ALLOWED_BACKEND_CALLS = {
    ("GET", "/"), ("GET", "/api/version"), ("GET", "/api/tags"), ("GET", "/api/ps"),
    ("POST", "/api/chat"), ("POST", "/api/show"),
}  # fmt: skip
# The app's own API; anything else in Gradio's listing would be a door nobody meant to open.
APP_ENDPOINTS = {
    "/chat", "/retry", "/stop", "/undo", "/models", "/prewarm",
    "/compare", "/compare_stop", "/battle", "/battle_stop", "/battle_vote", "/leaderboard",
    "/share_chat", "/share_compare", "/continue_copy",
    "/chat_with_image", "/compare_with_image", "/battle_with_image",
    "/export_chat_markdown", "/export_chat_json", "/export_compare_markdown",
    "/export_compare_json", "/import_chat",
}  # fmt: skip
MANAGEMENT_CALLS = {"pull", "push", "delete", "create", "copy", "blobs", "ps", "tags", "show"}


@dataclass
class GuardedUI:
    url: str
    proc: Proc
    backend: RunningEmulator
    metadata: FakeMetadataServer


@pytest.fixture(scope="module")
def guarded_ui(engine: str) -> Iterator[GuardedUI]:
    metadata = shared_metadata()
    metadata.reset()
    port = free_port()
    with emulator(upstream_url=engine, certs_cache_seconds=0) as backend:
        proc = Proc(
            "ui-security",
            [sys.executable, "-m", "ui"],
            env={
                **metadata.env(),
                "GOOGLE_APPLICATION_CREDENTIALS": "",
                "LLM_BACKEND_URL": backend.url,
                "LLM_AUTH": "google",
                "LLM_SHARE_SECRET": SHARE_SECRET,
                "LLM_UI_HOST": "127.0.0.1",
                "PORT": str(port),
                "LLM_RATE_LIMIT": "1000",
            },
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/config", timeout=90, proc=proc.popen)
            yield GuardedUI(url, proc, backend, metadata)
        finally:
            proc.stop()
            metadata.reset()


def exercise(ui: GuardedUI) -> list[str]:
    """Use the app the way people do, through every path that needs a token (a chat, a
    refreshed token after a key rotation, a share link, the model list), and return
    everything it answered."""
    client = Client(ui.url, verbose=False)
    seen: list[str] = []
    _, history, banner = client.predict(*chat_args("Hello", max_tokens=3), api_name="/chat")
    assert eval_count(last_note(history)) == 3, history
    seen += [json.dumps(history), banner]
    ui.metadata.rotate_key()  # the cached token no longer verifies: 401, refresh, retry
    _, history, banner = client.predict(*chat_args("Again", max_tokens=2), api_name="/chat")
    assert eval_count(last_note(history)) == 2, history
    seen += [json.dumps(history), banner]
    link, notice = client.predict(history, "smollm2:135m", "", 0.7, 0.9, 2, api_name="/share_chat")
    assert "?share=" in link
    seen += [link, notice]
    seen.append(json.dumps(client.predict(api_name="/models")))
    ui.metadata.identity_failure = 404  # and an error path, shown to the user
    try:
        ui.metadata.rotate_key()
        _, history, banner = client.predict(*chat_args("Third", max_tokens=2), api_name="/chat")
        seen += [json.dumps(history), banner]
    finally:
        ui.metadata.identity_failure = None
    return seen


def served_pages(base: str) -> dict[str, str]:
    """The page, its directly linked scripts and styles, and Gradio's API descriptions."""
    pages: dict[str, str] = {}
    with httpx.Client(timeout=30) as http:
        root = http.get(base + "/")
        pages["/"] = root.text
        for ref in re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', root.text):
            url = urljoin(base + "/", ref)
            if url.startswith(base):
                pages[ref] = http.get(url).text
        for path in ("/config", "/gradio_api/info", "/gradio_api/openapi.json", "/theme.css",
                     "/gradio_api/app_id", "/gradio_api/token"):  # fmt: skip
            pages[path] = http.get(base + path).text
    return pages


def test_no_token_or_secret_reaches_pages_api_logs_or_links(guarded_ui: GuardedUI) -> None:
    answers = exercise(guarded_ui)
    assert guarded_ui.metadata.issued_tokens >= 2  # tokens were fetched and refreshed
    assert guarded_ui.backend.state()["counters"].get("401", 0) >= 1  # the refresh path ran
    pages = served_pages(guarded_ui.url)
    # The last call's log line (its failed token fetch) is written before its answer; wait
    # for it in the file, so every line before it is there too.
    wait_until(
        lambda: "Could not get a Google ID token" in guarded_ui.proc.log(),
        timeout=10,
        what="the last call's log line",
    )
    log = guarded_ui.proc.log()
    assert "got a Google ID token" in log  # the fetches were logged...
    sample = guarded_ui.metadata.mint_token(guarded_ui.backend.url)
    assert JWT.search(sample)  # (the pattern does find tokens)
    places = {**pages, "log": log, **{f"answer {i}": a for i, a in enumerate(answers)}}
    for where, text in places.items():
        assert not JWT.search(text), f"an ID token in {where}"  # ...without any token
        assert SHARE_SECRET not in text, f"the share-link key in {where}"
    for where in ("log", *(k for k in places if k.startswith("answer"))):
        assert "Bearer " not in places[where], f"an Authorization header in {where}"


def test_only_the_apps_own_endpoints_are_exposed(guarded_ui: GuardedUI) -> None:
    info = httpx.get(guarded_ui.url + "/gradio_api/info", timeout=10).json()
    named = set(info["named_endpoints"])
    assert named <= APP_ENDPOINTS, f"unexpected endpoints: {sorted(named - APP_ENDPOINTS)}"
    assert {"/chat", "/models"} <= named
    assert not info.get("unnamed_endpoints")
    for name in named:  # none is named like one of Ollama's management calls
        assert name.strip("/") not in MANAGEMENT_CALLS, name
    view = Client(guarded_ui.url, verbose=False).view_api(print_info=False, return_format="dict")
    assert set(view["named_endpoints"]) == named


def test_hostile_calls_never_reach_management_endpoints() -> None:
    """Every public endpoint called with values aimed at Ollama's management API (model
    names that are paths or management verbs, proxy and file routes pointed at the
    backend): the backend only ever sees reads and chats."""
    attempts = ["../api/pull", "/api/delete", "smollm2:135m/../../api/push", "api/create",
                "x?name=y", "http://127.0.0.1:1/api/pull", "fake-ok#/api/copy"]  # fmt: skip
    with (
        FakeOllama() as fake,
        running_app(backend_url=fake.url, rate_limit_per_minute=10_000) as url,
    ):
        client = Client(url, verbose=False)
        for model in attempts:
            client.predict(*chat_args("Hi", model=model, max_tokens=1), api_name="/chat")
            client.predict(model, api_name="/prewarm")
            client.predict([], model, "", 0.7, 0.9, 1, api_name="/retry")
            client.predict("Hi", [model, "fake-ok"], "", 0.7, 1, [], [], [], api_name="/compare")
        with httpx.Client(timeout=10) as http:
            for path in ("/api/pull", "/api/delete", "/api/tags"):
                proxied = http.get(f"{url}/gradio_api/proxy={fake.url}{path}")
                assert proxied.status_code >= 400, (path, proxied.status_code)
            assert http.get(f"{url}/gradio_api/file=/etc/passwd").status_code >= 400
        # Anything started in the background has run once a pre-warm sent last has reached
        # the backend (its warm-up request: a one-token chat, ui/warming.WARM_UP_MESSAGES;
        # every call above has returned, so nothing else is sent from here on).
        before = len(fake.requests)
        client.predict("fake-ok", api_name="/prewarm")
        deadline = time.monotonic() + 10
        while not any(
            method == "POST"
            and body.get("model") == "fake-ok"
            and body.get("messages") == list(WARM_UP_MESSAGES)
            for method, _, body in fake.requests[before:]
        ):
            assert time.monotonic() < deadline, "the marker pre-warm never reached the backend"
            time.sleep(0.02)
        calls = {(method, path.split("?", 1)[0]) for method, path, _ in fake.requests}
        assert calls <= ALLOWED_BACKEND_CALLS, sorted(calls - ALLOWED_BACKEND_CALLS)
        chatted = {body.get("model") for method, path, body in fake.requests if path == "/api/chat"}
        assert chatted <= {"fake-ok"}, chatted


@pytest.mark.parametrize(
    "path", ["/", "/config", "/gradio_api/info", "/theme.css", "/gradio_api/startup-events"]
)
def test_responses_carry_security_headers(guarded_ui: GuardedUI, path: str) -> None:
    response = httpx.get(guarded_ui.url + path, timeout=10)
    headers = response.headers
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") in ("strict-origin-when-cross-origin", "same-origin",
                                               "no-referrer")  # fmt: skip
    frame_ancestors = "frame-ancestors" in headers.get("content-security-policy", "")
    assert headers.get("x-frame-options") in ("DENY", "SAMEORIGIN") or frame_ancestors


def test_streaming_responses_carry_security_headers_and_still_stream(
    guarded_ui: GuardedUI,
) -> None:
    """The headers are added without buffering: a chat still streams through the queue."""
    config = httpx.get(guarded_ui.url + "/config", timeout=10).json()
    fn = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "chat")
    prefix = guarded_ui.url + config["api_prefix"]
    body = {"data": list(chat_args("Count to ten", max_tokens=12)), "fn_index": fn,
            "session_hash": "sec-headers-1"}  # fmt: skip
    with httpx.Client(timeout=60) as http:
        joined = http.post(prefix + "/queue/join", json=body)
        assert joined.headers.get("x-content-type-options") == "nosniff"
        updates = 0
        with http.stream(
            "GET", prefix + "/queue/data", params={"session_hash": "sec-headers-1"}
        ) as s:
            assert s.headers.get("x-content-type-options") == "nosniff"
            assert s.headers.get("content-type", "").startswith("text/event-stream")
            for line in s.iter_lines():
                if '"process_generating"' in line:
                    updates += 1
                if '"process_completed"' in line:
                    break
    assert updates >= 2  # partial updates arrived before the end


def test_style_attributes_are_refused_except_the_page_templates_own(guarded_ui: GuardedUI) -> None:
    """The CSP lets through only the three `style="..."` values of Gradio's page template (by
    hash, with 'unsafe-hashes'), never any attribute ('unsafe-inline'): hostile content still
    cannot draw a full-window overlay (tests/test_hostile_browser.py), and Gradio's page logs
    no CSP error (tests/test_page_load_browser.py)."""
    policy = httpx.get(guarded_ui.url + "/", timeout=10).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    sources = directives["style-src-attr"].split()
    template = (Path(gr.__file__).parent / "templates/frontend/index.html").read_text("utf-8")
    values = re.findall(r'\sstyle="([^"]*)"', template)
    assert len(values) == 3  # on <html>, <body>, <gradio-app>
    expected = [f"'sha256-{base64.b64encode(hashlib.sha256(v.encode()).digest()).decode()}'"
                for v in values]  # fmt: skip
    assert sources == ["'unsafe-hashes'", *expected]


def test_the_page_and_its_config_come_compressed(guarded_ui: GuardedUI) -> None:
    """(Event streams are not compressed: they still stream, test above.)"""
    page = httpx.get(guarded_ui.url + "/", headers={"accept-encoding": "gzip"}, timeout=10)
    assert page.headers.get("content-encoding") == "gzip"
    assert "gradio_config" in page.text  # httpx undid the compression: the page is whole
    config = httpx.get(guarded_ui.url + "/config", headers={"accept-encoding": "gzip"}, timeout=10)
    assert config.headers.get("content-encoding") == "gzip"


def test_gradios_build_files_carry_nosniff_without_the_document_headers(
    guarded_ui: GuardedUI,
) -> None:
    """A page loads ~90 of Gradio's scripts and styles: the document-only headers (CSP,
    framing, referrer) would add ~550 bytes to each (issue 23). Documents keep them (above)."""
    page = httpx.get(guarded_ui.url + "/", timeout=10).text
    script = re.search(r'src="[^"]*?(/assets/index-[\w-]+\.js)"', page)
    assert script is not None, page[:500]
    asset = httpx.get(guarded_ui.url + script.group(1), timeout=10)
    assert asset.status_code == 200
    assert asset.headers.get("x-content-type-options") == "nosniff"
    assert "content-security-policy" not in asset.headers
    assert "x-frame-options" not in asset.headers
