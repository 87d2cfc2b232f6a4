"""The first page a new visitor gets (issue 23), in Chromium against the real app and engine:
no errors in the console under the CSP (light and dark, phone and desktop; screenshots in
test-artifacts/csp-screens/), the selected tab readable in both themes, and a light page:
the system's fonts, the page compressed, hashed assets cached for good, a description for
search results. The Lighthouse and pa11y figures are in the benchmark (bench/frontend.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, expect

from devtools.testkit.chat_app import running_app
from devtools.testkit.procs import ARTIFACTS

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "csp-screens"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
FONT_FILE = re.compile(r"\.(woff2?|ttf|otf)(\?|$)")

# WCAG 2 contrast ratio of the selected tab's text against the first opaque background
# behind it (https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio).
CONTRAST_JS = """
(selector) => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const el = document.querySelector(selector);
  let bg = null;
  for (let node = el; node; node = node.parentElement) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length >= 3 && (c.length < 4 || c[3] === 1)) { bg = c; break; }
  }
  bg = bg || [255, 255, 255];
  const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(bg)];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}
"""


@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(backend_url=engine) as url:
        yield url


def open_fresh(
    browser: Browser, url: str, theme: str, viewport: dict[str, int]
) -> tuple[Page, list[str], list[Response]]:
    """A new visitor's page (no stored state), its console errors and its responses."""
    page = browser.new_page(viewport=viewport, color_scheme=theme)  # type: ignore[arg-type]
    errors: list[str] = []
    responses: list[Response] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda response: responses.append(response))
    page.goto(url + ("/?__theme=dark" if theme == "dark" else "/"))
    expect(page.locator("#model input")).to_have_value(re.compile("SmolLM2"), timeout=30_000)
    expect(page.locator("#backend-status .backend-status")).to_be_visible()
    return page, errors, responses


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_a_fresh_page_logs_no_errors_under_the_csp(
    app_url: str, browser: Browser, theme: str, size: str
) -> None:
    page, errors, _ = open_fresh(browser, app_url, theme, PHONE if size == "phone" else DESKTOP)
    try:
        page.wait_for_timeout(1_500)  # the status poll's first ticks and the late scripts
        assert errors == []
        dark = page.evaluate("() => document.querySelector('.dark')?.tagName ?? null")
        assert dark == ("BODY" if theme == "dark" else None)  # Gradio's dark theme is on
        # The page template's own style attributes apply (their hashes are in the CSP): the
        # page and the app are flex columns that fill the window (a custom element's own
        # display would be inline).
        displays = page.evaluate(
            "() => [document.documentElement, document.body, document.querySelector('gradio-app')]"
            ".map((e) => getComputedStyle(e).display)"
        )
        assert displays == ["flex", "flex", "flex"]
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{theme}-{size}.png"), full_page=True)
    finally:
        page.close()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_selected_tab_reads_at_4_5_to_1(app_url: str, browser: Browser, theme: str) -> None:
    page, _, _ = open_fresh(browser, app_url, theme, PHONE)
    try:
        selected = "button[role='tab'][aria-selected='true']"
        expect(page.locator(selected)).to_have_text("Chat")
        ratio = page.evaluate(CONTRAST_JS, selected)
        assert ratio >= 4.5, f"the selected tab's text is {ratio:.2f}:1 in the {theme} theme"
    finally:
        page.close()


def test_the_page_is_light_on_a_phone(app_url: str, browser: Browser) -> None:
    page, _, responses = open_fresh(browser, app_url, "light", PHONE)
    try:
        page.wait_for_timeout(1_000)
        urls = [r.url for r in responses]
        assert not [u for u in urls if FONT_FILE.search(u)], "font files were loaded"
        document = next(r for r in responses if r.url.rstrip("/") == app_url)
        assert document.header_value("content-encoding") in ("gzip", "br")
        assets = [r for r in responses if "/assets/" in r.url and r.status == 200]
        assert assets, urls
        for asset in assets:
            assert "immutable" in (asset.header_value("cache-control") or ""), asset.url
        description = page.locator("meta[name='description']")
        expect(description).to_have_attribute("content", re.compile("open LLMs"))
    finally:
        page.close()


def test_a_fresh_page_asks_the_server_once_and_then_prewarms(
    app_url: str, browser: Browser
) -> None:
    """Every tab's fill comes from one load request (ui/pages/page_load.py), then the pre-warm
    of the picked model; what follows from the picks needs no request of its own. The status
    line's refresh polls are counted apart."""
    config = httpx.get(app_url + "/config", timeout=10).json()
    names = {d["id"]: d.get("api_name") for d in config["dependencies"]}
    page = browser.new_page(viewport=PHONE)
    sent: list[str] = []

    def record(request: Request) -> None:
        if request.method == "POST" and "/gradio_api/" in request.url:
            fn_index = (request.post_data_json or {}).get("fn_index")
            sent.append(str(names.get(fn_index)))

    page.on("request", record)
    try:
        page.goto(app_url)
        expect(page.locator("#model input")).to_have_value(re.compile("SmolLM2"), timeout=30_000)
        expect(page.locator("#model-info")).not_to_be_empty()
        page.wait_for_timeout(2_000)  # time for any event a fill would set off
        assert [name for name in sent if name != "refresh"] == ["page_load", "prewarm"]
    finally:
        page.close()
