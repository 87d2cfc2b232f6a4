"""A blind battle's pairing, held by the browser but readable only by the server.

The UI keeps no server state, so the browser carries the pairing between requests. Signing
alone would not do: the names would be readable in the token before the vote. So the
pairing is sealed with Fernet (`cryptography.fernet`): AES-128-CBC encryption authenticated
by HMAC-SHA256 over the version, timestamp, IV and ciphertext (encrypt-then-MAC), with a
published token format (https://github.com/fernet/spec). Fernet was chosen over AES-GCM
because it also carries the issue time under the MAC and checks the TTL itself
(`decrypt_at_time(ttl=...)`), and defines the encoding (URL-safe base64): with AES-GCM the
nonce handling, timestamp and token layout would be ours to write. Its key is derived from
the share-link secret (LLM_SHARE_SECRET) with HKDF-SHA256 and a label of its own, so the
battle key is never the key that signs share links.

The plaintext is padded to a fixed size, so the token's length says nothing about which
models were paired. Any instance holding the same secret opens any token; a token expires
after `TOKEN_TTL_S`.

Votes are bound to what the server streamed: when both replies of a turn have ended, the
server seals the pairing again with a digest of each reply (`replies`), and a vote is
taken only with such a token and the very replies it names. A script has to run a real
battle (rate-limited, streamed to its end) for each vote.

Replays: the token itself does not stop a second vote. The vote store does: the battle id
is the vote's key, and a second vote on it is refused by the store, whichever UI instance
it reaches (ui/votes/store.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Final

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ui.errors import InputRejected

KEY_LABEL: Final = b"serverless-llm-chat/battle-pairing/fernet"
PLAINTEXT_BYTES: Final = 512  # two 200-character names and the reply digests fit
# Fernet: version (1) + timestamp (8) + IV (16) + AES-CBC of the padded plaintext (PKCS7
# adds a whole block to 512 bytes) + HMAC-SHA256 (32) = 585 bytes = 780 base64 characters.
TOKEN_CHARS: Final = 4 * ((1 + 8 + 16 + PLAINTEXT_BYTES + 16 + 32 + 2) // 3)
TOKEN_TTL_S: Final = 24 * 3600
MAX_TOKEN_CHARS: Final = 2048  # longer input is refused before any decoding
MIN_SECRET_BYTES: Final = 16

_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+=*")


class BattleTokenError(InputRejected):
    """The token cannot be used; `user_message` says why (never quoting the secret)."""


@dataclass(frozen=True)
class BattlePairing:
    model_a: str
    model_b: str
    battle_id: str  # random, for logs
    issued_at: int  # unix seconds (the Fernet timestamp, under the MAC)
    # Digests of the last replies the server streamed to their end (reply_digest), set
    # only when the battle can be voted on.
    replies: tuple[str, str] | None = None


def reply_digest(text: str) -> str:
    """A short digest of a reply (96 bits of SHA-256; inside the sealed token it needs no
    key of its own). Over the words only: Gradio's Chatbot hands replies back reshaped
    (`inspect.cleandoc`: leading blank lines and common indentation removed)."""
    words = " ".join(text.split())
    digest = hashlib.sha256(words.encode("utf-8")).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode("ascii")


def votable(pairing: BattlePairing, reply_a: str, reply_b: str) -> BattlePairing:
    """The pairing bound to the two replies just streamed (a vote is then accepted)."""
    return replace(pairing, replies=(reply_digest(reply_a), reply_digest(reply_b)))


def new_pairing(model_a: str, model_b: str, *, now: float | None = None) -> BattlePairing:
    return BattlePairing(
        model_a, model_b, secrets.token_hex(8), int(time.time() if now is None else now)
    )


def _fernet(secret: bytes) -> Fernet:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the battle key must be at least {MIN_SECRET_BYTES} bytes")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_LABEL).derive(secret)
    return Fernet(base64.urlsafe_b64encode(key))


def seal_pairing(pairing: BattlePairing, secret: bytes) -> str:
    """The token for `pairing` (URL-safe base64, always `TOKEN_CHARS` long)."""
    fernet = _fernet(secret)
    fields: dict[str, object] = {
        "a": pairing.model_a,
        "b": pairing.model_b,
        "id": pairing.battle_id,
    }
    if pairing.replies is not None:
        fields["r"] = list(pairing.replies)
    payload = json.dumps(
        fields,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
    if len(payload) > PLAINTEXT_BYTES:
        raise ValueError("the model names are too long for a battle token")
    padded = payload + b" " * (PLAINTEXT_BYTES - len(payload))
    return fernet.encrypt_at_time(padded, pairing.issued_at).decode("ascii")


INVALID_MESSAGE = (
    "This battle cannot be verified (its token is invalid or was changed). "
    "Press “New battle” to start another one."
)


def open_pairing(
    token: object, secret: bytes, *, now: float | None = None, ttl: float = TOKEN_TTL_S
) -> BattlePairing:
    """The pairing inside a token made by `seal_pairing`, or BattleTokenError."""
    fernet = _fernet(secret)
    if not isinstance(token, str) or not token.strip():
        raise BattleTokenError("There is no battle yet: send a prompt to start one.")
    token = token.strip()
    # Only the exact shape a sealed token has: Fernet's base64 decoding would skip stray
    # characters, and a fixed length refuses oversized input before any work.
    if len(token) != TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(token):
        raise BattleTokenError(INVALID_MESSAGE)
    current = int(time.time() if now is None else now)
    try:
        plain = fernet.decrypt_at_time(token, ttl=int(ttl), current_time=current)
    except InvalidToken:
        raise _why_refused(fernet, token, ttl, current) from None
    try:
        data = json.loads(plain.decode("ascii"))
        digests = data.get("r")
        return BattlePairing(
            model_a=str(data["a"]),
            model_b=str(data["b"]),
            battle_id=str(data["id"]),
            issued_at=fernet.extract_timestamp(token),
            replies=(str(digests[0]), str(digests[1])) if digests else None,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        raise BattleTokenError(INVALID_MESSAGE) from None


def _why_refused(fernet: Fernet, token: str, ttl: float, current: int) -> BattleTokenError:
    """Fernet says only "invalid": an authentic token that failed is out of its time."""
    try:
        issued = fernet.extract_timestamp(token)  # verifies the MAC
    except InvalidToken:
        return BattleTokenError(INVALID_MESSAGE)
    if issued > current:  # dated ahead of this server's clock (Fernet allows 60 s)
        return BattleTokenError(INVALID_MESSAGE)
    hours = ttl / 3600
    return BattleTokenError(
        f"This battle is too old to continue or vote on (battles last {hours:g} hours). "
        "Press “New battle” to start another one."
    )
