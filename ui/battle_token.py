"""A blind battle's pairing, held by the browser but readable only by the server.

The UI keeps no server state, so the browser carries the pairing between requests. Signing
alone would not do: the names would be readable in the token before the vote. So the
pairing is encrypted, then authenticated (encrypt-then-MAC), with keys derived from the
share-link secret (LLM_SHARE_SECRET), using only HMAC-SHA256 from the standard library:

    enc_key = HMAC(secret, ENC_CONTEXT)        mac_key = HMAC(secret, MAC_CONTEXT)
    stream  = HMAC(enc_key, nonce || 0) || HMAC(enc_key, nonce || 1) || ...   (PRF in CTR mode)
    token   = b64url(VERSION || nonce || (padded JSON XOR stream) || HMAC(mac_key, everything))

The plaintext is padded to a fixed size, so the token's length says nothing about which
models were paired. Any instance holding the same secret opens any token; a token expires
after `TOKEN_TTL_S`.

Replays: the token itself does not stop a second vote. The battle page refuses a second
vote on a battle id in its process (ui/votes.OncePerBattle), every vote line carries the
battle id, and the leaderboard counts one vote per battle id (another instance may have
accepted a replay).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Final

from ui.errors import InputRejected

TOKEN_VERSION: Final = b"\x01"
ENC_CONTEXT: Final = b"serverless-llm-chat/battle-pairing/enc\x00"
MAC_CONTEXT: Final = b"serverless-llm-chat/battle-pairing/mac\x00"
NONCE_BYTES: Final = 16
MAC_BYTES: Final = 32
PLAINTEXT_BYTES: Final = 512  # two 200-character names fit; every token has one length
TOKEN_TTL_S: Final = 24 * 3600
MAX_TOKEN_CHARS: Final = 2048
MIN_SECRET_BYTES: Final = 16


class BattleTokenError(InputRejected):
    """The token cannot be used; `user_message` says why (never quoting the secret)."""


@dataclass(frozen=True)
class BattlePairing:
    model_a: str
    model_b: str
    battle_id: str  # random, for logs
    issued_at: int  # unix seconds


def new_pairing(model_a: str, model_b: str, *, now: float | None = None) -> BattlePairing:
    return BattlePairing(
        model_a, model_b, secrets.token_hex(8), int(time.time() if now is None else now)
    )


def _keys(secret: bytes) -> tuple[bytes, bytes]:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the battle key must be at least {MIN_SECRET_BYTES} bytes")
    enc_key = hmac.new(secret, ENC_CONTEXT, hashlib.sha256).digest()
    mac_key = hmac.new(secret, MAC_CONTEXT, hashlib.sha256).digest()
    return enc_key, mac_key


def _keystream(enc_key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = [
        hmac.new(enc_key, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest()
        for counter in range((length + 31) // 32)
    ]
    return b"".join(blocks)[:length]


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def seal_pairing(pairing: BattlePairing, secret: bytes) -> str:
    """The token for `pairing` (URL-safe base64, always the same length)."""
    enc_key, mac_key = _keys(secret)
    payload = json.dumps(
        {
            "a": pairing.model_a,
            "b": pairing.model_b,
            "id": pairing.battle_id,
            "t": pairing.issued_at,
        },
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
    if len(payload) > PLAINTEXT_BYTES:
        raise ValueError("the model names are too long for a battle token")
    padded = payload + b" " * (PLAINTEXT_BYTES - len(payload))
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = TOKEN_VERSION + nonce + _xor(padded, _keystream(enc_key, nonce, len(padded)))
    tag = hmac.new(mac_key, body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode("ascii")


INVALID_MESSAGE = (
    "This battle cannot be verified (its token is invalid or was changed). "
    "Press “New battle” to start another one."
)


def open_pairing(
    token: object, secret: bytes, *, now: float | None = None, ttl: float = TOKEN_TTL_S
) -> BattlePairing:
    """The pairing inside a token made by `seal_pairing`, or BattleTokenError."""
    enc_key, mac_key = _keys(secret)
    if not isinstance(token, str) or not token.strip():
        raise BattleTokenError("There is no battle yet: send a prompt to start one.")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise BattleTokenError(INVALID_MESSAGE)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BattleTokenError(INVALID_MESSAGE) from None
    # Only the canonical spelling: base64 ignores spare bits of the last character.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise BattleTokenError(INVALID_MESSAGE)
    if len(raw) != 1 + NONCE_BYTES + PLAINTEXT_BYTES + MAC_BYTES:
        raise BattleTokenError(INVALID_MESSAGE)
    body, tag = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(tag, hmac.new(mac_key, body, hashlib.sha256).digest()):
        raise BattleTokenError(INVALID_MESSAGE)
    if body[:1] != TOKEN_VERSION:
        raise BattleTokenError("This battle was started by another version of the app.")
    nonce, ciphertext = body[1 : 1 + NONCE_BYTES], body[1 + NONCE_BYTES :]
    plain = _xor(ciphertext, _keystream(enc_key, nonce, len(ciphertext)))
    try:
        data = json.loads(plain.decode("ascii"))
        pairing = BattlePairing(
            model_a=str(data["a"]),
            model_b=str(data["b"]),
            battle_id=str(data["id"]),
            issued_at=int(data["t"]),
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise BattleTokenError(INVALID_MESSAGE) from None
    age = (time.time() if now is None else now) - pairing.issued_at
    if age > ttl:
        hours = ttl / 3600
        raise BattleTokenError(
            f"This battle is too old to continue or vote on (battles last {hours:g} hours). "
            "Press “New battle” to start another one."
        )
    return pairing
