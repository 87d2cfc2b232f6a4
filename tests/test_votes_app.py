"""Votes shared by several UI processes (what many Cloud Run instances are): the real
`python -m ui` twice on one Firestore emulator and on one SQLite file, a vote cast in
Chromium on one, the leaderboard and a replayed vote on the other, a restart, and a
vote store that stops answering."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from playwright.sync_api import Browser, expect

from devtools.testkit import procs
from devtools.testkit.browser import fight_battle
from devtools.testkit.chat_app import is_note, text_of
from devtools.testkit.procs import Proc, free_port, wait_http

SECRET = "votes-app-test-secret-0123456789abcdef"


@contextmanager
def ui_process(engine: str, name: str, **env: str) -> Iterator[str]:
    # One share secret for all: every instance opens every battle token.
    with procs.ui_process(engine, name, LLM_SHARE_SECRET=SECRET, **env) as url:
        yield url


def battle(client: Client, message: str = "Name a colour.") -> tuple[str, Any, Any]:
    """A finished battle through the API that can be voted on: its token and both
    histories. A battle whose reply names a model ("Welcome to Hugging Face!") takes no
    vote (ui/votes/book.py), so a few are tried."""
    for _ in range(5):
        final = client.submit(message, "", [], [], 0.7, 8, api_name="/battle").result(timeout=120)
        if "names a model" not in str(final[1]):
            break
    token, chat_a, chat_b = final[2], final[4], final[7]
    for chat in (chat_a, chat_b):
        assert any(m["role"] == "assistant" and not is_note(m) and text_of(m) for m in chat)
    return token, chat_a, chat_b


def vote(client: Client, token: str, choice: str, chat_a: Any, chat_b: Any) -> str:
    banner, *_ = client.predict(token, choice, chat_a, chat_b, api_name="/battle_vote")
    return str(banner)


def board(url: str) -> str:
    return str(Client(url, verbose=False).predict(api_name="/leaderboard"))


def vote_in_the_browser(browser: Browser, url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        fight_battle(page, "Name a colour.", max_tokens=8)
        page.locator("#vote-a").click()
        expect(page.locator("#battle-banner")).to_contain_text("Thanks for voting")
    finally:
        page.close()


@pytest.mark.browser
def test_two_ui_processes_on_one_firestore_share_votes_and_refuse_replays(
    engine: str, firestore_emulator: str, browser: Browser
) -> None:
    env = {
        "LLM_VOTES": "firestore",
        "FIRESTORE_EMULATOR_HOST": firestore_emulator,
        "GOOGLE_CLOUD_PROJECT": f"test-{uuid.uuid4().hex[:12]}",
    }
    with ui_process(engine, "ui-votes-1", **env) as ui1:
        with ui_process(engine, "ui-votes-2", **env) as ui2:
            assert "No votes yet" in board(ui2)
            vote_in_the_browser(browser, ui1)
            shown = board(ui2)
            assert "1 vote." in shown
            assert "SmolLM2 135M Instruct" in shown and "Gemma 3 270M" in shown

            # A battle fought on UI 1 and voted there; the same vote replayed through UI 2.
            one = Client(ui1, verbose=False)
            token, chat_a, chat_b = battle(one)
            assert "Thanks for voting" in vote(one, token, "tie", chat_a, chat_b)
            replay = vote(Client(ui2, verbose=False), token, "b", chat_a, chat_b)
            assert "voted on already" in replay
            assert "2 votes." in board(ui1) and "2 votes." in board(ui2)
        # UI 2 restarted (a new instance after scale-to-zero): the leaderboard is kept.
        with ui_process(engine, "ui-votes-2b", **env) as ui2_again:
            assert "2 votes." in board(ui2_again)


def test_two_ui_processes_on_one_sqlite_file_and_a_restart(engine: str, tmp_path: Path) -> None:
    env = {"LLM_VOTES": f"sqlite:///{tmp_path / 'votes.sqlite3'}"}
    with (
        ui_process(engine, "ui-sqlite-1", **env) as ui1,
        ui_process(engine, "ui-sqlite-2", **env) as ui2,
    ):
        one, two = Client(ui1, verbose=False), Client(ui2, verbose=False)
        token, chat_a, chat_b = battle(one)
        assert "Thanks for voting" in vote(one, token, "a", chat_a, chat_b)
        assert "voted on already" in vote(two, token, "a", chat_a, chat_b)
        assert "1 vote." in board(ui2)
    with ui_process(engine, "ui-sqlite-3", **env) as ui3:  # a restart keeps the votes
        assert "1 vote." in board(ui3)


def test_a_vote_store_that_stops_answering_loses_nothing(engine: str) -> None:
    """Firestore goes away: the vote is refused with a plain "not saved", the chat keeps
    working, and once the store is back the same vote is saved."""
    port = free_port()
    emulator_args = ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}"]
    emulator = Proc("firestore-flaky", emulator_args)
    env = {
        "LLM_VOTES": "firestore",
        "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}",
        "GOOGLE_CLOUD_PROJECT": "test-flaky",
    }
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=90, proc=emulator.popen)
        with ui_process(engine, "ui-votes-flaky", **env) as url:
            client = Client(url, verbose=False)
            token, chat_a, chat_b = battle(client)
            emulator.stop()

            refused = vote(client, token, "a", chat_a, chat_b)
            assert "could not be saved" in refused and "press the button again" in refused
            assert "127.0.0.1" not in refused and "Firestore" not in refused
            assert "cannot be read just now" in board(url)
            _, history, banner = client.predict(
                "Hi", [], "smollm2:135m", "", 0.7, 0.9, 4, api_name="/chat"
            )
            assert history[-1]["role"] == "assistant" and text_of(history[-1]), banner

            emulator = Proc("firestore-flaky-again", emulator_args)
            wait_http(f"http://127.0.0.1:{port}/", timeout=90, proc=emulator.popen)
            # The user presses again. A just-started emulator (a cold JVM) may take longer
            # than the store's 5 s for its first answer, so allow a few presses.
            for _ in range(4):
                answer = vote(client, token, "a", chat_a, chat_b)
                if "could not be saved" not in answer:
                    break
            assert "Thanks for voting" in answer
            assert "1 vote." in board(url)
    finally:
        emulator.stop()
