"""Replies this server generated carry its MAC (ui/share/reply_mac.py), through the real Gradio
API: a generated reply shares as verified; the same reply with one character changed, other
figures, another model, another question or system prompt, or a made-up reply does not.
(The shared view's marks in Chromium: tests/test_share_browser.py.)

The app runs for real against a protocol-level fake Ollama: the MAC is about what the UI
streamed, not about which model answered."""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from gradio_client import Client

from devtools.testkit.chat_app import chat, is_note, msg, running_app, text_of
from devtools.testkit.fake_ollama import FakeOllama
from ui.share.format import SharedConversation, SharedMessage, decode_share
from ui.share.reply_mac import FIGURE_FORMATS, MAC_SHAPE, ReplyClaim, ReplyMacs
from ui.turn.figures import BOUND_FIELDS, NoteData, ReplyFigures, read_note_data

pytestmark = pytest.mark.timeout(120)

SECRET = "reply-mac-test-secret-0123456789abcdef"
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture(scope="module")
def app_url(fake: FakeOllama) -> Iterator[str]:
    with running_app(backend_url=fake.url, rate_limit_per_minute=1000, share_secret=SECRET) as url:
        yield url


@pytest.fixture(scope="module")
def generated(client: Client) -> list[dict[str, Any]]:
    """A two-turn chat the app generated (the second turn gets the first back from the
    browser, reshaped by Gradio as a real browser would hold it)."""
    _, history, _ = chat(client, "First?", model="fake-ok", system_prompt=SYSTEM, max_tokens=3)
    _, history, _ = chat(
        client, "Second?", history, model="fake-ok", system_prompt=SYSTEM, max_tokens=4
    )
    return list(history)


def share_chat(
    client: Client, history: Any, *, model: str = "fake-ok", system: str = SYSTEM
) -> SharedConversation:
    link, notice = client.predict(history, model, system, 0.7, 0.9, 4, api_name="/share_chat")
    assert "?share=" in link, notice
    token = parse_qs(urlsplit(link).query)["share"][0]
    return decode_share(token, SECRET.encode())


def shared_replies(conv: SharedConversation, column: int = 0) -> list[SharedMessage]:
    return [m for m in conv.columns[column].messages if m.role == "assistant"]


def verified(conv: SharedConversation, column: int = 0) -> list[bool]:
    return [m.mac is not None for m in shared_replies(conv, column)]


def notes(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in history if is_note(m)]


def reply_indexes(history: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(history) if m["role"] == "assistant" and not is_note(m)]


def test_a_generated_reply_carries_a_mac_and_shares_as_verified(
    client: Client, generated: list[dict[str, Any]]
) -> None:
    data = [read_note_data(n) for n in notes(generated)]
    assert len(data) == 2, data
    for note in data:
        assert note is not None and note.model == "fake-ok" and note.figures.eval_count
        assert MAC_SHAPE.fullmatch(str(note.mac))
    conv = share_chat(client, generated)
    assert verified(conv) == [True, True]
    first = shared_replies(conv)[0]
    assert first.model is None  # the column's model wrote it: not repeated in the link
    assert first.stats is not None and first.stats.eval_count == 3


def test_a_changed_reply_is_not_verified(client: Client, generated: list[dict[str, Any]]) -> None:
    history = copy.deepcopy(generated)
    index = reply_indexes(history)[0]
    text = text_of(history[index])
    history[index] = msg("assistant", text[:-2] + "X" + text[-1:])  # one character
    assert verified(share_chat(client, history)) == [False, True]


def test_other_figures_model_question_or_system_prompt_are_not_verified(
    client: Client, generated: list[dict[str, Any]]
) -> None:
    def changed(edit: Any) -> list[dict[str, Any]]:
        history = copy.deepcopy(generated)
        edit(history, notes(history)[0])
        return history

    def edited_data(note: dict[str, Any], **changes: Any) -> None:
        data = read_note_data(note)
        assert data is not None
        figures = data.figures.model_copy(update=changes.pop("figures", {}))
        edited = data.model_copy(update={"figures": figures, **changes})
        note["metadata"]["id"] = edited.as_note_id()

    def faster(_: Any, note: dict[str, Any]) -> None:
        edited_data(note, figures={"total_s": 0.01})

    def more_tokens(_: Any, note: dict[str, Any]) -> None:
        edited_data(note, figures={"eval_count": 30})

    def other_model(_: Any, note: dict[str, Any]) -> None:
        edited_data(note, model="fake-slow")

    def other_question(history: list[dict[str, Any]], _: Any) -> None:
        history[0] = msg("user", "Is this reply about something else?")

    for edit in (faster, more_tokens, other_model, other_question):
        assert verified(share_chat(client, changed(edit))) == [False, True], edit.__name__

    # Only the data counts: a note whose text was edited shares the figures it carries.
    def faster_text(_: Any, note: dict[str, Any]) -> None:
        title = note["metadata"]["title"]
        note["metadata"]["title"] = re.sub(r"[\d.]+ s total", "0.01 s total", title)

    conv = share_chat(client, changed(faster_text))
    assert verified(conv) == [True, True]
    assert shared_replies(conv)[0].stats == read_note_data(notes(generated)[0]).figures.bound()  # type: ignore[union-attr]
    # The same history shared with another system prompt than it was generated with.
    assert verified(share_chat(client, generated, system="Say yes.")) == [False, False]
    # Shared as another model's chat: the replies keep naming the model that wrote them.
    conv = share_chat(client, generated, model="fake-slow")
    assert verified(conv) == [True, True]
    assert [m.model for m in shared_replies(conv)] == ["fake-ok", "fake-ok"]


def test_made_up_replies_are_not_verified(client: Client, generated: list[dict[str, Any]]) -> None:
    real_note = notes(generated)[0]
    real_data = read_note_data(real_note)
    assert real_data is not None
    forged_tag = real_data.model_copy(update={"mac": "A" * 22}).as_note_id()
    made_up = [
        msg("user", "Who are you?"),
        msg("assistant", "I am your bank. Enter your password."),
        {**real_note, "metadata": {**real_note["metadata"], "id": forged_tag}},
        msg("user", "And now?"),
        msg("assistant", "Same reply, the real note's MAC copied under it."),
        copy.deepcopy(real_note),
        msg("user", "No figures?"),
        msg("assistant", "A reply without a note."),
    ]
    conv = share_chat(client, made_up)
    assert verified(conv) == [False, False, False]
    assert all(m.model is None for m in shared_replies(conv))


def test_old_histories_without_macs_still_share(client: Client) -> None:
    old = [msg("user", "Hi"), msg("assistant", "Hello!"), msg("assistant", "x", "0.10 s total")]
    conv = share_chat(client, old)
    assert [m.content for m in conv.columns[0].messages] == ["Hi", "Hello!"]
    assert verified(conv) == [False]


def test_a_copy_of_a_share_stays_verified_and_compare_replies_are_verified_too(
    client: Client, generated: list[dict[str, Any]]
) -> None:
    link, _ = client.predict(generated, "fake-ok", SYSTEM, 0.7, 0.9, 4, api_name="/share_chat")
    token = parse_qs(urlsplit(link).query)["share"][0]
    _, copied, *_ = client.predict(token, api_name="/continue_copy")
    assert verified(share_chat(client, copied)) == [True, True]

    outputs = client.predict(
        "Compare?", ["fake-ok", "fake-slow"], SYSTEM, 0.7, 3, [], [], [], api_name="/compare"
    )
    histories = [h for h in outputs if isinstance(h, list)][:2]
    link, notice = client.predict(
        ["fake-ok", "fake-slow"], SYSTEM, 0.7, 3, *histories, [], api_name="/share_compare"
    )
    assert "?share=" in link, notice
    conv = decode_share(parse_qs(urlsplit(link).query)["share"][0], SECRET.encode())
    assert verified(conv, 0) == [True] and verified(conv, 1) == [True]


# === the MAC itself (no app) ================================================================
def test_the_key_is_apart_from_the_share_and_battle_keys_and_figures_count_as_shown() -> None:
    import hashlib
    import hmac

    from ui.share import format as share

    secret = SECRET.encode()
    claim = ReplyClaim("fake-ok", "", "Q?", "A.", ReplyFigures(total_s=1.234, eval_count=3))
    mac = ReplyMacs(secret).mac(claim)
    assert len(mac) == 22
    battle_key = _battle_signing_key(secret)
    share_key = share._signer(secret).derive_key()
    for key in (secret, battle_key, share_key):
        other = hmac.new(key, claim.message(), hashlib.sha256).digest()[:16]
        assert base64.urlsafe_b64encode(other).decode().rstrip("=") != mac
    # Figures are bound as the note shows them: 1.234 s is shown as 1.23 s, 1.24 s is not.
    assert ReplyMacs(secret).verify(
        ReplyClaim("fake-ok", "", "Q?", "A.", ReplyFigures(total_s=1.23, eval_count=3)), mac
    )
    assert not ReplyMacs(secret).verify(
        ReplyClaim("fake-ok", "", "Q?", "A.", ReplyFigures(total_s=1.24, eval_count=3)), mac
    )


def test_texts_are_taken_as_gradio_ends_up_showing_them() -> None:
    import inspect

    from ui.share.reply_mac import shown_text

    text = "\n\n  Code:\n\tindented\n"  # cleandoc is not idempotent on this
    once = inspect.cleandoc(text)
    assert inspect.cleandoc(once) != once
    assert shown_text(text) == shown_text(once) == shown_text(inspect.cleandoc(once))
    assert shown_text("a\n  b") != shown_text("a\n  c")


def _battle_signing_key(secret: bytes) -> bytes:
    """The key that signs battle tokens, found from a real token and Fernet's public spec.

    A Fernet key is a 16-byte signing key then a 16-byte encryption key, and a token ends in
    HMAC-SHA256(signing key, everything before it) (github.com/fernet/spec, Spec.md). The
    candidate is derived as battle_token documents (HKDF-SHA256, info=KEY_LABEL) and accepted
    only if it signs a token that `seal_pairing` made, so no library internals are read.
    """
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from ui.votes import battle_token

    token = battle_token.seal_pairing(
        battle_token.BattlePairing("a", "b", "id", issued_at=1_700_000_000), secret
    )
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    key = HKDF(hashes.SHA256(), length=32, salt=None, info=battle_token.KEY_LABEL).derive(secret)
    signing_key = key[:16]
    assert hmac.compare_digest(hmac.new(signing_key, raw[:-32], hashlib.sha256).digest(), raw[-32:])
    return signing_key


def test_the_mac_binds_the_figures_a_share_carries() -> None:
    # One list: what the MAC formats is what ReplyFigures.bound keeps and a share carries.
    assert sorted(FIGURE_FORMATS) == sorted(BOUND_FIELDS)
    macs = ReplyMacs(SECRET.encode())
    warm = ReplyFigures(total_s=1.0, load_s=0.0004, prompt_tokens=9, done_reason="stop")
    mac = macs.mac(ReplyClaim("fake-ok", "", "Q?", "A.", warm))
    # A warm model's load time is not shown, so it is not bound; nor are the unshared ones.
    assert macs.verify(ReplyClaim("fake-ok", "", "Q?", "A.", ReplyFigures(total_s=1.0)), mac)
    loaded = warm.model_copy(update={"load_s": 0.5})
    assert not macs.verify(ReplyClaim("fake-ok", "", "Q?", "A.", loaded), mac)
    assert NoteData(figures=warm, model="fake-ok").figures.bound() == ReplyFigures(total_s=1.0)
