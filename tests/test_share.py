"""Share links: signed, compressed, self-contained tokens (ui/share/format.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import stat
import string
import tracemalloc
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import pytest
from itsdangerous import Signer

from ui.settings import Settings
from ui.share import format as share
from ui.share.format import (
    SharedColumn,
    SharedConversation,
    SharedMessage,
    ShareLinkError,
    ShareLinkMalformed,
    ShareLinkTampered,
    ShareLinkUnsupportedVersion,
    ShareParameters,
    ShareTooLarge,
    decode_share,
    encode_share,
    fit_to_share_limit,
    keep_last_turns,
    resolve_share_secret,
    share_url,
)
from ui.turn.figures import ReplyFigures

ALPHABET = string.ascii_letters + string.digits + "-_."  # URL-safe base64 and the separator
TAMPER_TEXT = "This share link is invalid or was changed: it was not signed by this app"


@pytest.fixture
def secret() -> bytes:
    return os.urandom(32)


def _words(rng: random.Random, count: int) -> str:
    # Random words compress poorly, like real text does not: tokens grow with the turns.
    return " ".join(
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(count)
    )


def make_conversation(
    *,
    turns: int = 3,
    kind: Literal["chat", "compare"] = "chat",
    words_per_reply: int = 8,
    seed: int = 7,
) -> SharedConversation:
    rng = random.Random(seed)
    models = [("gemma3:4b", "Gemma 3 4B"), ("llama3.2:3b", "Llama 3.2 3B")]
    columns = []
    for model, display in models[: 1 if kind == "chat" else 2]:
        messages = [SharedMessage(role="system", content="You are terse.")]
        for turn in range(turns):
            messages.append(
                SharedMessage(role="user", content=f"question {turn}: {_words(rng, 5)}")
            )
            messages.append(
                SharedMessage(
                    role="assistant",
                    content=f"answer {turn} from {model}: {_words(rng, words_per_reply)}",
                    stats=ReplyFigures(
                        ttft_s=0.25,
                        tokens_per_s=31.5,
                        eval_count=40 + turn,
                        total_s=1.5,
                        load_s=0.0,
                    ),
                )
            )
        columns.append(SharedColumn(model=model, display_name=display, messages=messages))
    return SharedConversation(
        kind=kind,
        columns=columns,
        parameters=ShareParameters(
            system_prompt="You are terse.", temperature=0.7, top_p=0.9, max_tokens=256
        ),
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def seal(payload: bytes, secret: bytes, *, fmt: bytes = b"\x02", compress: bool = True) -> str:
    """Build a token by hand from the layout documented in ui/share/format.py."""
    body = fmt + (zlib.compress(payload) if compress else payload)
    signer = Signer(
        secret, salt=share.SIGNER_SALT, key_derivation="hmac", digest_method=hashlib.sha256
    )
    return signer.sign(base64.urlsafe_b64encode(body).rstrip(b"=")).decode()


def format_1_token(payload: bytes, secret: bytes) -> str:
    """A link as the app made them before share links were signed with itsdangerous."""
    body = zlib.compress(payload)
    context = b"serverless-llm-chat/share-link\x00"
    mac = hmac.new(secret, context + b"\x01" + body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(b"\x01" + mac + body).rstrip(b"=").decode()


# --- round trip ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["chat", "compare"])
def test_round_trip_keeps_everything(kind: Literal["chat", "compare"], secret: bytes) -> None:
    conv = make_conversation(kind=kind)
    token = encode_share(conv, secret)
    assert set(token) <= set(ALPHABET)
    decoded = decode_share(token, secret)
    assert decoded == conv
    assert decoded.columns[0].messages[2].stats == ReplyFigures(
        ttft_s=0.25, tokens_per_s=31.5, eval_count=40, total_s=1.5, load_s=0.0
    )
    assert decoded.parameters.system_prompt == "You are terse."
    assert decoded.v == share.SHARE_FORMAT_VERSION


def test_same_conversation_gives_same_token(secret: bytes) -> None:
    assert encode_share(make_conversation(), secret) == encode_share(make_conversation(), secret)


def test_unicode_and_newlines_survive(secret: bytes) -> None:
    text = 'Grüße 👋\nline two\t"quoted" <b>not html</b> & ?share=x#frag'
    conv = SharedConversation(
        kind="chat",
        columns=[
            SharedColumn(model="smollm2:135m", messages=[SharedMessage(role="user", content=text)])
        ],
    )
    assert decode_share(encode_share(conv, secret), secret).columns[0].messages[0].content == text


def test_hand_built_token_following_the_documented_layout_decodes(secret: bytes) -> None:
    conv = make_conversation()
    payload = json.dumps(conv.model_dump(mode="json")).encode()  # non-canonical on purpose
    assert decode_share(seal(payload, secret), secret) == conv


# --- tampering -----------------------------------------------------------------------------
def test_any_single_changed_character_is_rejected_as_tampered(secret: bytes) -> None:
    token = encode_share(make_conversation(turns=1), secret)
    for position, original in enumerate(token):
        # Every alternative for the last character: some only flip base64's spare bits.
        options = [c for c in ALPHABET if c != original]
        candidates = options if position == len(token) - 1 else [options[position % len(options)]]
        for replacement in candidates:
            changed = token[:position] + replacement + token[position + 1 :]
            with pytest.raises(ShareLinkTampered) as caught:
                decode_share(changed, secret)
            assert TAMPER_TEXT in caught.value.user_message


def test_token_signed_with_another_secret_is_rejected(secret: bytes) -> None:
    foreign = encode_share(make_conversation(), os.urandom(32))
    with pytest.raises(ShareLinkTampered, match="not signed by this app"):
        decode_share(foreign, secret)


def test_truncated_tokens_are_rejected_with_a_clear_message(secret: bytes) -> None:
    token = encode_share(make_conversation(), secret)
    for cut in [1, 2, 3, 4, 5, len(token) // 2, len(token) - 10]:
        with pytest.raises((ShareLinkTampered, ShareLinkMalformed)) as caught:
            decode_share(token[:-cut], secret)
        message = caught.value.user_message
        assert "whole link was copied" in message or "cut off" in message or "too short" in message


@pytest.mark.parametrize(
    ("garbage", "expected"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("hello world!", "characters a share link never has"),
        ("abc%2Fdef", "characters a share link never has"),
        ("A", "too short"),  # also an impossible base64 length
        ("QUJD", "too short"),
    ],
)
def test_garbage_is_malformed(garbage: str, expected: str, secret: bytes) -> None:
    with pytest.raises(ShareLinkMalformed) as caught:
        decode_share(garbage, secret)
    assert expected in caught.value.user_message or "impossible" in caught.value.user_message


@pytest.mark.parametrize("garbage", ["A" * 200, "AQ" + "A" * 200])  # "AQ": byte 0x01
def test_valid_alphabet_garbage_fails_the_signature(garbage: str, secret: bytes) -> None:
    with pytest.raises(ShareLinkTampered):
        decode_share(garbage, secret)


def test_non_text_token_is_malformed(secret: bytes) -> None:
    with pytest.raises(ShareLinkMalformed, match="not text"):
        decode_share(b"abc", secret)  # type: ignore[arg-type]


def test_errors_never_contain_the_secret(secret: bytes) -> None:
    text_secret = b"correct-horse-battery-staple-42"
    token = encode_share(make_conversation(), os.urandom(32))
    with pytest.raises(ShareLinkError) as caught:
        decode_share(token, text_secret)
    assert text_secret.decode() not in str(caught.value)
    assert text_secret.decode() not in caught.value.user_message


def test_short_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        encode_share(make_conversation(), b"short")


# --- size limits ---------------------------------------------------------------------------
def test_encode_refuses_a_conversation_over_the_limit_and_says_how_big(secret: bytes) -> None:
    conv = make_conversation(turns=40, words_per_reply=60)
    full = len(encode_share(conv, secret, max_chars=10**9))
    with pytest.raises(ShareTooLarge) as caught:
        encode_share(conv, secret, max_chars=3000)
    assert caught.value.size == full
    assert caught.value.limit == 3000
    assert f"{full} characters" in caught.value.user_message
    assert "3000" in caught.value.user_message


def test_default_limit_keeps_the_whole_url_under_8000_characters(secret: bytes) -> None:
    assert share.DEFAULT_MAX_TOKEN_CHARS <= share.MAX_URL_CHARS - 300
    token, _, _ = fit_to_share_limit(make_conversation(turns=200, words_per_reply=40), secret)
    url = share_url("https://serverless-llm-chat-abcdefghij-uc.a.run.app/", token)
    assert len(url) <= 8000


def test_oversized_token_is_refused_before_any_work(secret: bytes) -> None:
    with pytest.raises(ShareTooLarge) as caught:
        decode_share("A" * (share.MAX_DECODE_TOKEN_CHARS + 1), secret)
    assert caught.value.limit == share.MAX_DECODE_TOKEN_CHARS


def test_decompression_bomb_is_stopped_at_the_cap(secret: bytes) -> None:
    bomb_size = 8 * 1024 * 1024
    payload = b'{"v":1,"kind":"chat","pad":"' + b" " * bomb_size + b'"}'
    token = seal(payload, secret)
    del payload
    assert len(token) <= share.MAX_DECODE_TOKEN_CHARS  # gets past the length check
    tracemalloc.start()
    try:
        with pytest.raises(ShareTooLarge, match="expands beyond"):
            decode_share(token, secret)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Bounded decompression: memory stays near the cap, far below the bomb's 8 MiB.
    assert peak < 4 * share.MAX_JSON_BYTES


# --- versions and strict schema ------------------------------------------------------------
def _payload(conv: SharedConversation, **changes: object) -> dict:
    data = conv.model_dump(mode="json", exclude_none=True)
    data.update(changes)
    return data


def test_newer_json_version_is_unsupported(secret: bytes) -> None:
    data = _payload(make_conversation(), v=2)
    with pytest.raises(ShareLinkUnsupportedVersion, match="v2"):
        decode_share(seal(json.dumps(data).encode(), secret), secret)


def test_unknown_token_format_byte_is_unsupported(secret: bytes) -> None:
    payload = share.canonical_json(make_conversation())
    with pytest.raises(ShareLinkUnsupportedVersion, match="token format 3"):
        decode_share(seal(payload, secret, fmt=b"\x03"), secret)


def test_a_link_of_the_earlier_format_says_so(secret: bytes) -> None:
    old = format_1_token(share.canonical_json(make_conversation()), secret)
    with pytest.raises(ShareLinkUnsupportedVersion, match="earlier version") as caught:
        decode_share(old, secret)
    assert "new link" in caught.value.user_message


def test_the_signature_is_checked_before_decompressing(secret: bytes) -> None:
    """A bomb signed with another key is refused without being inflated at all."""
    bomb = seal(b" " * (8 * 1024 * 1024), os.urandom(32))
    tracemalloc.start()
    try:
        with pytest.raises(ShareLinkTampered):
            decode_share(bomb, secret)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Inflating would allocate up to the cap (MAX_JSON_BYTES) before refusing.
    assert peak < share.MAX_JSON_BYTES // 4


def test_missing_version_is_malformed(secret: bytes) -> None:
    data = _payload(make_conversation())
    del data["v"]
    with pytest.raises(ShareLinkMalformed, match="no format version"):
        decode_share(seal(json.dumps(data).encode(), secret), secret)


def _with_first_message(conv: SharedConversation, message: dict) -> dict:
    data = _payload(conv)
    data["columns"][0]["messages"][0] = message
    return data


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _with_first_message(d, {"role": "tool", "content": "x"}), "role"),
        (lambda d: _with_first_message(d, {"role": "user", "content": 5}), "content"),
        (
            lambda d: _with_first_message(
                d, {"role": "user", "content": "x" * (share.MAX_MESSAGE_CHARS + 1)}
            ),
            "content",
        ),
        (
            lambda d: _with_first_message(
                d, {"role": "user", "content": "x", "stats": {"ttft_s": 1}}
            ),
            "stats",
        ),
        (lambda d: {**_payload(d), "kind": "battle"}, "kind"),
        (lambda d: {**_payload(d), "extra": 1}, "extra"),
        (lambda d: {**_payload(d), "created_at": "2025-01-01T00:00:00"}, "created_at"),
        (lambda d: {**_payload(d), "columns": [{"model": 123, "messages": []}]}, "model"),
        (lambda d: {**_payload(d), "columns": [{"model": "x" * 201, "messages": []}]}, "model"),
        (
            lambda d: {**_payload(d), "parameters": {"temperature": "hot"}},
            "temperature",
        ),
    ],
)
def test_signed_but_invalid_content_is_rejected(
    mutate: Callable[[SharedConversation], dict], expected: str, secret: bytes
) -> None:
    data = mutate(make_conversation())
    with pytest.raises(ShareLinkMalformed) as caught:
        decode_share(seal(json.dumps(data).encode(), secret), secret)
    assert expected in caught.value.user_message


def test_integer_json_numbers_are_accepted_for_float_stats(secret: bytes) -> None:
    data = _with_first_message(
        make_conversation(), {"role": "assistant", "content": "x", "stats": {"total_s": 2}}
    )
    decoded = decode_share(seal(json.dumps(data).encode(), secret), secret)
    assert decoded.columns[0].messages[0].stats == ReplyFigures(total_s=2.0)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (zlib.compress(b"not json at all"), "not JSON"),
        (zlib.compress(b"[1, 2]"), "not an object"),
        (zlib.compress(b'{"v": 1}')[:-3], "incomplete"),
        (zlib.compress(b'{"v": 1}') + b"trailing", "incomplete"),
        (b"this is not zlib data", "not readable"),
    ],
)
def test_signed_but_broken_payload_is_malformed(body: bytes, expected: str, secret: bytes) -> None:
    with pytest.raises(ShareLinkMalformed, match=expected):
        decode_share(seal(body, secret, compress=False), secret)


def test_schema_is_enforced_when_building_too() -> None:
    with pytest.raises(ValueError, match="only assistant messages carry stats"):
        SharedMessage(role="user", content="hi", stats=ReplyFigures(ttft_s=1))
    with pytest.raises(ValueError, match="exactly one column"):
        SharedConversation(kind="chat", columns=[SharedColumn(model="a"), SharedColumn(model="b")])
    with pytest.raises(ValueError, match="at least two columns"):
        SharedConversation(kind="compare", columns=[SharedColumn(model="a")])
    with pytest.raises(ValueError):
        ReplyFigures(tokens_per_s=float("nan"))


# --- share the last N turns ----------------------------------------------------------------
def _turn_texts(column: SharedColumn) -> list[str]:
    return [m.content for m in column.messages if m.role == "user"]


@pytest.mark.parametrize("kind", ["chat", "compare"])
def test_fit_keeps_the_last_turns_that_fit(kind: Literal["chat", "compare"], secret: bytes) -> None:
    conv = make_conversation(turns=30, kind=kind, words_per_reply=30)
    limit = 2500
    with pytest.raises(ShareTooLarge):
        encode_share(conv, secret, max_chars=limit)

    token, kept, dropped = fit_to_share_limit(conv, secret, limit)

    assert len(token) <= limit
    assert kept >= 1
    assert dropped >= 1
    assert kept + dropped == 30
    decoded = decode_share(token, secret)
    for original, shared in zip(conv.columns, decoded.columns, strict=True):
        assert _turn_texts(shared) == _turn_texts(original)[-kept:]
        assert shared.messages[0].role == "system"  # the lead-in before the first turn stays
        assert shared.messages[-1] == original.messages[-1]
    assert decoded.parameters == conv.parameters
    # As many as fit: one more turn would not.
    with pytest.raises(ShareTooLarge):
        encode_share(keep_last_turns(conv, kept + 1), secret, max_chars=limit)


def test_fit_keeps_everything_when_it_fits(secret: bytes) -> None:
    conv = make_conversation(turns=3)
    token, kept, dropped = fit_to_share_limit(conv, secret)
    assert (kept, dropped) == (3, 0)
    assert decode_share(token, secret) == conv


def test_fit_says_when_even_one_turn_is_too_large(secret: bytes) -> None:
    conv = make_conversation(turns=4, words_per_reply=400)
    with pytest.raises(ShareTooLarge, match="Even the last turn") as caught:
        fit_to_share_limit(conv, secret, 300)
    assert caught.value.limit == 300
    assert caught.value.size > 300


def test_keep_last_turns_counts_user_turns() -> None:
    conv = make_conversation(turns=5)
    assert share.count_turns(keep_last_turns(conv, 2)) == 2
    assert share.count_turns(keep_last_turns(conv, 99)) == 5
    assert _turn_texts(keep_last_turns(conv, 0).columns[0]) == []
    with pytest.raises(ValueError, match=">= 0"):
        keep_last_turns(conv, -1)


# --- URLs ----------------------------------------------------------------------------------
def test_share_url_puts_the_token_in_a_query_parameter(secret: bytes) -> None:
    token = encode_share(make_conversation(), secret)
    url = share_url("https://chat.example.com/app?lang=en&share=old#top", token)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert query == {"lang": ["en"], "share": [token]}
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
        "https",
        "chat.example.com",
        "/app",
        "top",
    )
    assert decode_share(query["share"][0], secret) == make_conversation()
    assert share_url("http://127.0.0.1:7860", token) == f"http://127.0.0.1:7860/?share={token}"


def test_share_url_rejects_bad_input(secret: bytes) -> None:
    token = encode_share(make_conversation(), secret)
    with pytest.raises(ValueError, match="absolute http"):
        share_url("chat.example.com", token)
    with pytest.raises(ValueError, match="URL-safe"):
        share_url("https://chat.example.com", "a b")
    with pytest.raises(ShareTooLarge) as caught:
        share_url("https://chat.example.com/" + "p" * 100, token, max_url_chars=len(token) + 50)
    assert caught.value.limit == len(token) + 50


# --- the signing key -----------------------------------------------------------------------
def test_configured_secret_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_SHARE_SECRET", raising=False)
    key_file = tmp_path / "share-secret"
    settings = Settings(share_secret="  a-long-enough-configured-secret  ")
    assert (
        resolve_share_secret(settings, secret_path=key_file) == b"a-long-enough-configured-secret"
    )
    assert not key_file.exists()


def test_configured_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_SHARE_SECRET", "from-the-environment-0123456789")
    secret = resolve_share_secret(Settings(), secret_path=tmp_path / "k")
    assert secret == b"from-the-environment-0123456789"


def test_short_configured_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LLM_SHARE_SECRET is too short") as caught:
        resolve_share_secret(Settings(share_secret="hunter2"), secret_path=tmp_path / "k")
    assert "hunter2" not in str(caught.value)


def test_secret_file_is_created_private_and_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLM_SHARE_SECRET", raising=False)
    key_file = tmp_path / "cache" / "serverless-llm-chat" / "share-secret"
    with caplog.at_level(logging.WARNING, logger="ui.share.format"):
        first = resolve_share_secret(Settings(), secret_path=key_file)
    assert len(first) >= share.MIN_SECRET_BYTES
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().strip() == first
    assert "LLM_SHARE_SECRET" in caplog.text
    assert first.decode() not in caplog.text
    # A restart reads the same key, so old links still open.
    second = resolve_share_secret(Settings(), secret_path=key_file)
    assert second == first
    token = encode_share(make_conversation(), first)
    assert decode_share(token, second) == make_conversation()
    assert [p.name for p in key_file.parent.iterdir()] == ["share-secret"]  # no temp files


def test_default_secret_path_is_in_the_users_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLM_SHARE_SECRET", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    key = resolve_share_secret(Settings())
    key_file = tmp_path / ".cache" / "serverless-llm-chat" / "share-secret"
    assert key_file.read_bytes().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_empty_leftover_key_file_is_replaced_and_loose_mode_fixed(tmp_path: Path) -> None:
    key_file = tmp_path / "share-secret"
    key_file.write_bytes(b"")
    key = resolve_share_secret(Settings(share_secret=None), secret_path=key_file)
    assert len(key) >= share.MIN_SECRET_BYTES
    assert key_file.read_bytes().strip() == key

    key_file.chmod(0o644)
    assert resolve_share_secret(Settings(share_secret=None), secret_path=key_file) == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
