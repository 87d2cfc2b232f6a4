"""Deep links (?model=, ?compare=, ?q=): the parsing rules, then the real app in Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from gradio_client import Client
from playwright.sync_api import Browser, Page, expect

from devtools.testkit.chat_app import running_app
from ui.share.deep_links import (
    chat_link,
    compare_link,
    initial_tab,
    match_models,
)
from ui.view.render import notice_html

OFFERED = ["gemma3:270m", "smollm2:135m"]
SMOLLM_LABEL = "SmolLM2 135M Instruct — Llama · 135M"
GEMMA_LABEL = "Gemma 3 270M (base) — Gemma · 270M · base model, not chat-tuned"


# === rules ================================================================================
def test_models_are_matched_in_the_offered_spelling_and_others_noted() -> None:
    found, notices = match_models(
        ["smollm2:135m", "nope:1b", "SMOLLM2:135M", "bad name!", "gemma3:270m"], OFFERED
    )
    assert found == ["smollm2:135m", "gemma3:270m"]
    assert len(notices) == 3
    assert "“nope:1b”" in notices[0] and "not available here" in notices[0]
    assert "gemma3:270m, smollm2:135m" in notices[0]  # says what is available
    assert "“SMOLLM2:135M”" in notices[1]  # matched exactly as the backend lists it
    assert "“bad name!”" in notices[2] and "not a model name" in notices[2]


def test_duplicate_and_latest_tags() -> None:
    found, notices = match_models(["smollm2:135m", "smollm2:135m"], OFFERED)
    assert found == ["smollm2:135m"] and "twice" in notices[0]
    found, notices = match_models(["llama3"], ["llama3:latest"])
    assert found == ["llama3:latest"] and notices == []


def test_chat_link_model_and_prompt() -> None:
    link = chat_link({"model": "gemma3:270m", "q": "Hi there"}, OFFERED, 100)
    assert link.models == ["gemma3:270m"] and link.prompt == "Hi there" and link.notices == []
    unknown = chat_link({"model": "ghost:7b"}, OFFERED, 100)
    assert unknown.models == [] and "ghost:7b" in unknown.notices[0]
    too_long = chat_link({"q": "x" * 101}, OFFERED, 100)
    assert too_long.prompt is None and "101 characters" in too_long.notices[0]
    # With ?compare= the prompt belongs to the Compare tab.
    assert chat_link({"compare": "a,b", "q": "hi"}, OFFERED, 100).prompt is None


def test_compare_link_fills_and_cuts() -> None:
    assert compare_link({"q": "hi"}, OFFERED, OFFERED, 100) is None
    ok = compare_link({"compare": "smollm2:135m, gemma3:270m", "q": "hi"}, OFFERED, OFFERED, 100)
    assert ok is not None and ok.models == ["smollm2:135m", "gemma3:270m"]
    assert ok.prompt == "hi" and ok.notices == []
    one_known = compare_link({"compare": "gemma3:270m,ghost:1b"}, OFFERED, OFFERED, 100)
    assert one_known is not None and one_known.models == ["gemma3:270m", "smollm2:135m"]
    assert any("ghost:1b" in n for n in one_known.notices)
    assert any("at least 2" in n for n in one_known.notices)
    many = ["a:1", "b:1", "c:1", "d:1"]
    cut = compare_link({"compare": ",".join(many)}, many, many, 100)
    assert cut is not None and cut.models == many[:3] and "d:1" in cut.notices[0]


def test_initial_tab_and_notice_escaping() -> None:
    assert initial_tab({"share": "abc", "compare": "a,b"}) == "shared"
    assert initial_tab({"compare": "a,b"}) == "compare"
    assert initial_tab({"model": "x", "q": "y"}) is None
    assert notice_html([]) == ""
    assert "&lt;script&gt;" in notice_html(["<script>"])


# === in the browser =======================================================================
@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(backend_url=engine, rate_limit_per_minute=1000) as url:
        yield url


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    return page


@pytest.mark.browser
def test_compare_link_selects_models_and_prefills_prompt(app_url: str, browser: Browser) -> None:
    query = urlencode({"compare": "smollm2:135m,gemma3:270m", "q": "Name a colour."})
    page = open_page(browser, f"{app_url}/?{query}")
    try:
        expect(page.get_by_role("tab", name="Compare", selected=True)).to_be_visible(timeout=30_000)
        expect(page.locator("#compare-message textarea")).to_have_value("Name a colour.")
        chips = page.locator("#compare-models .token")
        expect(chips).to_have_count(2)
        expect(chips.nth(0)).to_contain_text("SmolLM2 135M Instruct")
        expect(chips.nth(1)).to_contain_text("Gemma 3 270M")
        expect(page.locator("#compare-head-1")).to_contain_text("SmolLM2 135M Instruct")
        expect(page.locator("#compare-head-2")).to_contain_text("Gemma 3 270M (base)")
        expect(page.locator("#compare-banner")).to_be_hidden()  # nothing to report
    finally:
        page.close()


@pytest.mark.browser
def test_unknown_models_in_links_give_a_notice_not_an_error(app_url: str, browser: Browser) -> None:
    query = urlencode({"compare": "gemma3:270m,ghost:9b"})
    page = open_page(browser, f"{app_url}/?{query}")
    try:
        banner = page.locator("#compare-banner")
        expect(banner).to_contain_text("“ghost:9b”", timeout=30_000)
        expect(banner).to_contain_text("not available here")
        # The valid model is kept and the other slot filled with a default.
        chips = page.locator("#compare-models .token")
        expect(chips).to_have_count(2)
        expect(chips.nth(0)).to_contain_text("Gemma 3 270M")
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
    finally:
        page.close()

    query = urlencode({"model": "ghost:9b", "q": "Hello!"})
    page = open_page(browser, f"{app_url}/?{query}")
    try:
        expect(page.locator("#chat-banner")).to_contain_text("“ghost:9b”", timeout=30_000)
        expect(page.locator("#message textarea")).to_have_value("Hello!")
        expect(page.locator("#model input")).to_have_value(SMOLLM_LABEL)  # the default
        expect(page.get_by_role("tab", name="Chat", selected=True)).to_be_visible()
    finally:
        page.close()

    page = open_page(browser, f"{app_url}/?{urlencode({'model': 'gemma3:270m'})}")
    try:
        expect(page.locator("#model input")).to_have_value(GEMMA_LABEL, timeout=30_000)
        expect(page.locator("#chat-banner")).to_be_hidden()
    finally:
        page.close()


def refill_pickers(app_url: str, pickers_real: bool, chat: object, compare: object) -> list[Any]:
    """The status bar's picker refill (ui/pages/status_bar.py) through Gradio's HTTP API, as
    the page's poll script clicks it, with the pickers' values the browser holds."""
    config = httpx.get(app_url + "/config", timeout=10).json()
    button = next(
        c["id"]
        for c in config["components"]
        if c.get("props", {}).get("elem_id") == "backend-pickers-refill"
    )
    fn = next(
        int(d.get("id", i))
        for i, d in enumerate(config["dependencies"])
        if [button, "click"] in d["targets"]
    )
    body = {"data": [pickers_real, chat, compare], "fn_index": fn, "session_hash": "racecheck"}
    answer = httpx.post(app_url + "/gradio_api/run/predict", json=body, timeout=30)
    answer.raise_for_status()
    return list(answer.json()["data"])


def test_picker_refill_leaves_pickers_its_page_load_has_not_filled(app_url: str) -> None:
    """The race behind `?model=` turning into the default: the status line's first refresh
    (0.5 s after load) read the pickers before the page's load handler had applied the
    link, and its refill landed after it. Pickers still empty are left to the load."""
    Client(app_url, verbose=False).predict(api_name="/models")  # the process knows the list
    _, chat, compare, *followers = refill_pickers(app_url, False, None, [])
    assert chat.get("value", "unset") == "unset" and "choices" not in chat  # a skip
    assert compare.get("value", "unset") == "unset" and "choices" not in compare
    assert all({"value", "visible"}.isdisjoint(f) for f in followers), followers  # skips
    # Filled pickers (a deep link's picks) are kept, in the link's order.
    linked = ["smollm2:135m", "gemma3:270m"]
    _, chat, compare, chat_info, *_ = refill_pickers(app_url, False, "gemma3:270m", linked)
    assert chat["value"] == "gemma3:270m" and compare["value"] == linked
    assert "Gemma" in str(chat_info)  # what follows from the pick comes with the refill
