"""Blind battles: the pairing token, then `python -m ui` for real (its stdout is the vote
log Cloud Logging would read), driven through gradio_client and Chromium."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from playwright.sync_api import expect

from devtools.testkit.browser import chromium, fight_battle
from devtools.testkit.chat_app import is_note, text_of
from devtools.testkit.procs import Proc, free_port, wait_http
from ui.votes.battle_token import (
    MAX_TOKEN_CHARS,
    TOKEN_TTL_S,
    BattleTokenError,
    new_pairing,
    open_pairing,
    seal_pairing,
)
from ui.votes.store import SqliteVoteStore

SECRET = b"battle-test-secret-0123456789abcdef"
MODELS = {"smollm2:135m", "gemma3:270m"}
# Anything that would give a model away before the vote.
NAME_HINTS = ("smollm", "gemma", "llama", "135m", "270m")


# === the token ============================================================================
def test_token_round_trip_hides_the_names_and_their_length() -> None:
    pairing = new_pairing("smollm2:135m", "gemma3:270m")
    token = seal_pairing(pairing, SECRET)
    assert open_pairing(token, SECRET) == pairing
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for hint in NAME_HINTS:
        assert hint not in token.lower() and hint.encode() not in raw.lower()
    other = seal_pairing(new_pairing("a-much-longer-model-name:70b-instruct", "x:1b"), SECRET)
    assert len(other) == len(token)  # the length says nothing about the names
    assert seal_pairing(pairing, SECRET) != token  # a fresh nonce each time


@pytest.mark.parametrize("position", [0, 1, 20, 300, -2, -1])
def test_a_changed_character_is_rejected(position: int) -> None:
    token = seal_pairing(new_pairing("smollm2:135m", "gemma3:270m"), SECRET)
    index = position % len(token)
    changed = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
    with pytest.raises(BattleTokenError, match="cannot be verified"):
        open_pairing(changed, SECRET)


def test_foreign_expired_and_garbage_tokens_are_rejected() -> None:
    token = seal_pairing(new_pairing("smollm2:135m", "gemma3:270m"), SECRET)
    with pytest.raises(BattleTokenError, match="cannot be verified"):
        open_pairing(token, b"another-secret-of-this-app-000000")
    later = time.time() + TOKEN_TTL_S + 60
    with pytest.raises(BattleTokenError, match="too old"):
        open_pairing(token, SECRET, now=later)
    for garbage in ("%%%", "abc", token[:-10], token + "AAAA"):
        with pytest.raises(BattleTokenError) as caught:
            open_pairing(garbage, SECRET)
        assert SECRET.decode() not in caught.value.user_message
    with pytest.raises(BattleTokenError, match="send a prompt"):
        open_pairing("", SECRET)


def _flip_byte(token: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("index", [0, 1, 8, 9, 24, 25, 300, -33, -1])
def test_any_changed_byte_is_rejected_including_the_time(index: int) -> None:
    # Bytes 1-8 are the issue time: moving it would extend a battle's life.
    token = seal_pairing(new_pairing("smollm2:135m", "gemma3:270m"), SECRET)
    with pytest.raises(BattleTokenError, match="cannot be verified"):
        open_pairing(_flip_byte(token, index), SECRET)


def test_expiry_is_exact_and_a_foreign_old_token_is_not_called_old() -> None:
    issued = 1_700_000_000
    token = seal_pairing(new_pairing("smollm2:135m", "gemma3:270m", now=issued), SECRET)
    assert open_pairing(token, SECRET, now=issued + TOKEN_TTL_S).issued_at == issued
    with pytest.raises(BattleTokenError, match="too old") as caught:
        open_pairing(token, SECRET, now=issued + TOKEN_TTL_S + 1)
    assert "24 hours" in caught.value.user_message
    with pytest.raises(BattleTokenError, match="too old"):
        open_pairing(token, SECRET, now=issued + 3600, ttl=60)
    with pytest.raises(BattleTokenError, match="cannot be verified"):
        open_pairing(token, SECRET, now=issued - 3600)  # made "later" than now: not old
    # Without the key nothing about the token is told, not even that it is old.
    with pytest.raises(BattleTokenError, match="cannot be verified"):
        open_pairing(token, b"another-secret-of-this-app-000000", now=issued + 10 * TOKEN_TTL_S)


def test_the_battle_key_is_not_the_share_key() -> None:
    """The share secret is not used as the cipher key as it is: HKDF derives one."""
    from cryptography.fernet import Fernet, InvalidToken

    token = seal_pairing(new_pairing("smollm2:135m", "gemma3:270m"), SECRET)
    raw_key = base64.urlsafe_b64encode(SECRET[:32])
    with pytest.raises(InvalidToken):
        Fernet(raw_key).decrypt(token)


def test_oversized_and_odd_tokens_are_refused() -> None:
    token = seal_pairing(new_pairing("smollm2:135m", "gemma3:270m"), SECRET)
    for odd in (
        "A" * (MAX_TOKEN_CHARS + 1),
        "A" * 10_000_000,
        token + token,
        token[:100] + "." + token[101:],  # base64 decoding would skip the stray "."
        token[:-1] + "=",
    ):
        with pytest.raises(BattleTokenError, match="cannot be verified"):
            open_pairing(odd, SECRET)
    assert open_pairing(f"  {token}\n", SECRET).model_a == "smollm2:135m"


def test_a_short_key_and_long_names_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        seal_pairing(new_pairing("a", "b"), b"short")
    with pytest.raises(ValueError, match="too long"):
        seal_pairing(new_pairing("x" * 300, "y" * 300), SECRET)


# === the app ==============================================================================
@pytest.fixture(scope="module")
def ui_proc(
    engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Proc, Path]]:
    vote_db = tmp_path_factory.mktemp("votes") / "votes.sqlite3"
    port = free_port()
    proc = Proc(
        "ui-battle",
        [sys.executable, "-m", "ui"],
        env={
            "PORT": str(port),
            "LLM_UI_HOST": "127.0.0.1",
            "LLM_BACKEND_URL": engine,
            "LLM_SHARE_SECRET": SECRET.decode(),
            "LLM_VOTES": f"sqlite:///{vote_db}",
            "LLM_RATE_LIMIT": "1000",
            "LLM_AUTH": "none",
        },
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=90, proc=proc.popen)
        yield f"http://127.0.0.1:{port}", proc, vote_db
    finally:
        proc.stop()


def vote_records(proc: Proc) -> list[dict[str, Any]]:
    records = []
    for line in proc.log().splitlines():
        if line.startswith("{") and '"battle_vote"' in line:
            records.append(json.loads(line))
    return records


def replies(history: list[dict[str, Any]]) -> list[str]:
    return [text_of(m) for m in history if m["role"] == "assistant" and not is_note(m)]


def run_battle(client: Client, message: str, token: str = "", histories: Any = ([], [])) -> Any:
    job = client.submit(message, token, *histories, 0.7, 8, api_name="/battle")
    final = job.result(timeout=120)
    outputs = job.outputs()  # every streamed update, in order
    assert outputs, "the battle streamed nothing"
    return final, outputs


def test_battle_hides_names_until_the_vote_then_logs_one_record(
    ui_proc: tuple[str, Proc, Path],
) -> None:
    url, proc, vote_db = ui_proc
    store = SqliteVoteStore(vote_db)
    client = Client(url, verbose=False)
    final, updates = run_battle(client, "Say hello.")
    for update in updates:
        dumped = json.dumps(update).lower()
        for hint in NAME_HINTS:
            assert hint not in dumped, f"{hint!r} leaked before the vote: {dumped[:300]}"
    _, _, token, head_a, chat_a, _, head_b, chat_b, _ = final
    assert token and "Model A" in head_a and "Model B" in head_b
    assert replies(chat_a) and replies(chat_b), final

    # A follow-up continues the same (hidden) pair, each side its own conversation.
    final2, updates2 = run_battle(client, "And goodbye?", token, (chat_a, chat_b))
    assert all(hint not in json.dumps(u).lower() for u in updates2 for hint in NAME_HINTS)
    token2, chat_a2, chat_b2 = final2[2], final2[4], final2[7]
    # The same battle, its token now bound to the new replies (a vote needs those).
    first, second = open_pairing(token, SECRET), open_pairing(token2, SECRET)
    assert (second.model_a, second.model_b, second.battle_id) == (
        first.model_a, first.model_b, first.battle_id,
    )  # fmt: skip
    assert second.replies is not None and second.replies != first.replies
    assert len(replies(chat_a2)) == 2 and len(replies(chat_b2)) == 2

    # Not yet answered, tampered, or unknown choices are refused and not logged.
    banner, *_ = client.predict(token2, "a", [], [], api_name="/battle_vote")
    assert "Wait until both models have answered" in banner
    changed = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    banner, *_ = client.predict(changed, "a", chat_a2, chat_b2, api_name="/battle_vote")
    assert "cannot be verified" in banner
    banner, *_ = client.predict(token2, "best", chat_a2, chat_b2, api_name="/battle_vote")
    assert "Unknown vote" in banner
    assert vote_records(proc) == [] and store.vote_count() == 0

    before = time.time()
    banner, token_after, head_a, head_b = client.predict(
        token2, "b", chat_a2, chat_b2, api_name="/battle_vote"
    )
    assert token_after == ""  # the battle is over
    revealed = {head_a, head_b}
    assert any("SmolLM2 135M Instruct" in h for h in revealed)
    assert any("Gemma 3 270M" in h for h in revealed)
    assert "Thanks for voting: Model B is better" in banner

    deadline = time.monotonic() + 10
    while not vote_records(proc):
        assert time.monotonic() < deadline, "no vote record on stdout"
        time.sleep(0.1)
    (record,) = vote_records(proc)
    assert {record["model_a"], record["model_b"]} == MODELS
    assert record["choice"] == "b" and record["winner"] == record["model_b"]
    assert record["severity"] == "INFO" and record["event"] == "battle_vote"
    assert record["timestamp"].endswith("Z")
    assert abs(datetime.fromisoformat(record["timestamp"]).timestamp() - before) < 60
    assert record["logger"] == "ui.battle.votes"  # the log line also names its logger
    assert isinstance(record["battle_id"], str) and record["battle_id"]
    # The vote store has it, counted under its pair.
    assert store.vote_count() == 1
    (pair,) = store.pair_counts()
    assert (pair.first, pair.second) == tuple(sorted(MODELS)) and pair.battles == 1

    # The same battle cannot be voted on twice (a replayed request, or another tab).
    banner, *_ = client.predict(token2, "a", chat_a2, chat_b2, api_name="/battle_vote")
    assert "voted on already" in banner  # the answer comes after the store refused it
    assert len(vote_records(proc)) == 1 and store.vote_count() == 1

    board = client.predict(api_name="/leaderboard")
    assert "SmolLM2 135M Instruct" in board and "Gemma 3 270M (base)" in board
    assert "1 vote." in board and "95% interval" in board


def test_battle_in_the_browser_reveals_names_only_after_voting(
    ui_proc: tuple[str, Proc, Path],
) -> None:
    url, proc, _ = ui_proc
    already = len(vote_records(proc))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(url)
            fight_battle(page, "Name a fruit.", max_tokens=12)
            answers = '[data-testid="bot"]'
            expect(page.locator(f"#battle-chat-a {answers}").first).to_be_visible()
            expect(page.locator(f"#battle-chat-b {answers}").first).to_be_visible()
            visible = page.locator("#battle-columns").inner_text().lower()
            visible += page.locator("#battle-banner").inner_text().lower()
            for hint in NAME_HINTS:
                assert hint not in visible, f"{hint!r} is visible before the vote"
            page.locator("#vote-tie").click()
            expect(page.locator("#battle-banner")).to_contain_text("Thanks for voting")
            heads = page.locator("#battle-head-a").inner_text()
            heads += page.locator("#battle-head-b").inner_text()
            assert "SmolLM2 135M Instruct" in heads and "Gemma 3 270M" in heads
            # "New battle" clears the page in the browser: anonymous again, nothing shown.
            page.locator("#battle-new").click()
            expect(page.locator("#battle-head-a")).to_have_text("Model A")
            expect(page.locator("#battle-head-b")).to_have_text("Model B")
            expect(page.locator(f"#battle-chat-a {answers}")).to_have_count(0)
            expect(page.locator("#battle-banner")).to_be_hidden()
        finally:
            page.close()
    deadline = time.monotonic() + 10
    while len(vote_records(proc)) < already + 1:
        assert time.monotonic() < deadline, "the browser's vote was not logged"
        time.sleep(0.1)
    assert vote_records(proc)[-1]["choice"] == "tie"
