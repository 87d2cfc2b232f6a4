"""Share links that carry their own content.

A shared chat or comparison has to open after the UI restarts and on any Cloud Run instance,
so nothing is stored server-side: the link itself holds the conversation, compressed and
signed with a server secret. Only this app (holding the secret) can mint a link that opens.

Token layout (itsdangerous `Signer`: HMAC-SHA256, key derived from the secret with
SIGNER_SALT; URL-safe base64 without padding)::

    token = b64(FORMAT (1 byte, 0x02) || zlib(canonical JSON)) "." b64(HMAC)

The signature is checked (in constant time, by itsdangerous) before anything is
decompressed or parsed, the decompression is bounded (MAX_JSON_BYTES), and the JSON is
validated against a strict schema even though a valid signature means this server wrote it.
Links of format 1 (a hand-written HMAC layout) are refused with a message saying so.

Public API::

    SharedConversation, SharedColumn, SharedMessage, ShareParameters (figures: ui/turn/figures.py)
    encode_share(conv, secret, *, max_chars=DEFAULT_MAX_TOKEN_CHARS) -> str
    decode_share(token, secret, *, max_chars=MAX_DECODE_TOKEN_CHARS) -> SharedConversation
    fit_to_share_limit(conv, secret, limit=DEFAULT_MAX_TOKEN_CHARS) -> (token, kept, dropped)
    keep_last_turns(conv, turns) -> SharedConversation
    share_url(base_url, token, *, param="share", max_url_chars=MAX_URL_CHARS) -> str
    resolve_share_secret(settings, *, secret_path=None) -> bytes

Errors are `ShareLinkError` subclasses carrying a `user_message` that never contains the
secret: ShareLinkTampered, ShareLinkMalformed, ShareLinkUnsupportedVersion, ShareTooLarge.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from itsdangerous import BadData, BadSignature, Signer
from itsdangerous.encoding import base64_decode, base64_encode
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ui.errors import InputRejected
from ui.share.reply_mac import MAC_PATTERN
from ui.turn.figures import ReplyFigures

logger = logging.getLogger(__name__)

# --- format constants --------------------------------------------------------------------
SHARE_FORMAT_VERSION: Final = 1  # the JSON "v" field
TOKEN_FORMAT = b"\x02"  # first byte of the signed body (format 1 had no itsdangerous)
SIGNER_SALT = b"serverless-llm-chat/share-link"  # keeps these signatures apart from other uses
SHARE_QUERY_PARAM = "share"

# --- size limits -------------------------------------------------------------------------
# RFC 9110 §4.1 recommends that senders and recipients support URIs of at least 8000
# octets, and 8 KB is the default request-line limit of nginx, Apache and Kestrel; longer
# URLs can fail with 414 somewhere between the browser and the app. The default token limit
# leaves about 500 characters of the 8000 for the base URL and "?share=".
MAX_URL_CHARS = 8000
DEFAULT_MAX_TOKEN_CHARS = 7500
# What decode accepts. Larger than the encode default so that an operator who raises the
# encode limit does not break links already handed out; still small enough to be cheap, and
# below what the UI's HTTP server reliably reads (ui/web/request_limits.py: MAX_QUERY_BYTES).
MAX_DECODE_TOKEN_CHARS = 13_500
# Upper bound on the decompressed JSON: a 13.5 K-character token holds about 10 KB of zlib
# data, which real chat text never inflates past a few hundred KB. Anything beyond is a bomb.
MAX_JSON_BYTES = 512 * 1024
MIN_SECRET_BYTES = 16
# The signature alone is 43 characters (32 bytes); anything shorter cannot be a share link.
MIN_TOKEN_CHARS = 48

# --- schema bounds -----------------------------------------------------------------------
MAX_NAME_CHARS = 200
MAX_MESSAGE_CHARS = 100_000
MAX_SYSTEM_PROMPT_CHARS = 20_000
MAX_MESSAGES_PER_COLUMN = 1000
MAX_COLUMNS = 4

_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_.-]+")  # URL-safe base64 and the "." separator


# === errors ==============================================================================
class ShareLinkError(InputRejected):
    """A share link could not be made or opened. `user_message` is safe to show."""

    default_message = "This share link cannot be opened."


class ShareLinkTampered(ShareLinkError):
    """Signature mismatch: the link was changed, cut short, or made by another server."""

    default_message = (
        "This share link is invalid or was changed: it was not signed by this app. "
        "If you copied it, check that the whole link was copied."
    )


class ShareLinkMalformed(ShareLinkError):
    default_message = "This share link is garbled: it is not a share link of this app."


class ShareLinkUnsupportedVersion(ShareLinkError):
    default_message = "This share link uses a format this version of the app cannot read."


class ShareTooLarge(ShareLinkError):
    """Raised when making a link (size vs limit) and when opening an oversized one."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message)


# === data model ==========================================================================
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SharedMessage(_Strict):
    role: Literal["user", "assistant", "system"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)
    stats: ReplyFigures | None = None  # the figures a MAC binds (ReplyFigures.bound)
    # A reply this server generated: its MAC (ui/share/reply_mac.py), checked again when shown,
    # and the model that wrote it when that is not the column's.
    mac: str | None = Field(default=None, pattern=MAC_PATTERN)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    # A question sent with an image: its sha256 (the image itself does not fit a link; the
    # shared view shows IMAGE_PLACEHOLDER), which a reply's MAC binds.
    image: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _stats_only_on_replies(self) -> SharedMessage:
        if self.image is not None and self.role != "user":
            raise ValueError(f"only user messages carry an image, not {self.role!r} ones")
        if self.stats is not None and self.role != "assistant":
            raise ValueError(f"only assistant messages carry stats, not {self.role!r} ones")
        if self.mac is not None and self.stats is None:
            raise ValueError("only replies with stats carry a MAC")
        if self.model is not None and self.mac is None:
            raise ValueError("only replies with a MAC name their model")
        return self


class SharedColumn(_Strict):
    """One model's side of the conversation (a chat has one column, a comparison 2+)."""

    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    display_name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    messages: list[SharedMessage] = Field(default_factory=list, max_length=MAX_MESSAGES_PER_COLUMN)

    @property
    def label(self) -> str:
        return self.display_name or self.model


class ShareParameters(_Strict):
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_CHARS)
    temperature: float | None = Field(default=None, ge=0, le=10)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class SharedConversation(_Strict):
    v: Literal[1] = SHARE_FORMAT_VERSION
    kind: Literal["chat", "compare"]
    columns: Annotated[list[SharedColumn], Field(min_length=1, max_length=MAX_COLUMNS)]
    parameters: ShareParameters = Field(default_factory=ShareParameters)
    created_at: AwareDatetime = Field(default_factory=_utc_now)

    @field_validator("created_at")
    @classmethod
    def _normalize_time(cls, value: datetime) -> datetime:
        return value.astimezone(UTC).replace(microsecond=0)

    @model_validator(mode="after")
    def _columns_match_kind(self) -> SharedConversation:
        if self.kind == "chat" and len(self.columns) != 1:
            raise ValueError(f"a chat has exactly one column, got {len(self.columns)}")
        if self.kind == "compare" and len(self.columns) < 2:
            raise ValueError(f"a comparison has at least two columns, got {len(self.columns)}")
        return self


# === turns ===============================================================================
def _split_turns(
    messages: list[SharedMessage],
) -> tuple[list[SharedMessage], list[list[SharedMessage]]]:
    """Messages before the first user message, then one list per turn (user + replies)."""
    prefix: list[SharedMessage] = []
    turns: list[list[SharedMessage]] = []
    for message in messages:
        if message.role == "user":
            turns.append([message])
        elif turns:
            turns[-1].append(message)
        else:
            prefix.append(message)
    return prefix, turns


def count_turns(conv: SharedConversation) -> int:
    """Turns (a user message and what follows it) in the longest column."""
    return max(len(_split_turns(column.messages)[1]) for column in conv.columns)


def keep_last_turns(conv: SharedConversation, turns: int) -> SharedConversation:
    """The same conversation with only its last `turns` turns in every column.

    Columns of a comparison are aligned by turn index from the start, so the same number of
    leading turns is dropped from each. Messages before the first user turn are kept.
    """
    if turns < 0:
        raise ValueError(f"turns must be >= 0, got {turns}")
    drop = max(count_turns(conv) - turns, 0)
    columns = []
    for column in conv.columns:
        prefix, column_turns = _split_turns(column.messages)
        kept = [m for turn in column_turns[drop:] for m in turn]
        columns.append(column.model_copy(update={"messages": prefix + kept}))
    return conv.model_copy(update={"columns": columns})


# === encoding ============================================================================
def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the share signing key must be at least {MIN_SECRET_BYTES} bytes")


def _signer(secret: bytes) -> Signer:
    _check_secret(secret)
    # HMAC-SHA256 with a key derived from the secret and this use's salt, so the same
    # secret gives battle tokens (ui/votes/battle_token.py) a different key.
    return Signer(
        secret, salt=SIGNER_SALT, sep=".", key_derivation="hmac", digest_method=hashlib.sha256
    )


def canonical_json(conv: SharedConversation) -> bytes:
    """Sorted keys, no spaces, no null fields: the same conversation gives the same bytes."""
    data = conv.model_dump(mode="json", exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _seal(payload_json: bytes, secret: bytes) -> str:
    body = TOKEN_FORMAT + zlib.compress(payload_json, level=9)
    return _signer(secret).sign(base64_encode(body)).decode("ascii")


def encode_share(
    conv: SharedConversation, secret: bytes, *, max_chars: int = DEFAULT_MAX_TOKEN_CHARS
) -> str:
    """Compress and sign `conv` into a URL-safe token of at most `max_chars` characters."""
    _check_secret(secret)
    token = _seal(canonical_json(conv), secret)
    if len(token) > max_chars:
        raise ShareTooLarge(
            f"This conversation is too long to share as a link: it needs {len(token)} "
            f"characters and the limit is {max_chars}. Share only the last turns instead.",
            size=len(token),
            limit=max_chars,
        )
    return token


def fit_to_share_limit(
    conv: SharedConversation, secret: bytes, limit: int = DEFAULT_MAX_TOKEN_CHARS
) -> tuple[str, int, int]:
    """Token for as many of the last turns as fit in `limit` characters.

    Returns (token, kept_turns, dropped_turns). Raises ShareTooLarge when not even the last
    turn fits.
    """
    total = count_turns(conv)
    try:
        return encode_share(conv, secret, max_chars=limit), total, 0
    except ShareTooLarge as full_error:
        if total <= 1:
            what = "This conversation is" if total == 0 else "Even the last turn is"
            raise ShareTooLarge(
                f"{what} too long to share as a link: it needs {full_error.size} "
                f"characters and the limit is {limit}.",
                size=full_error.size,
                limit=limit,
            ) from None
    # Binary search for the most turns that fit (token size grows with the turns kept).
    best: tuple[str, int] | None = None
    low, high = 1, total - 1
    smallest_size = 0
    while low <= high:
        middle = (low + high) // 2
        try:
            best = (encode_share(keep_last_turns(conv, middle), secret, max_chars=limit), middle)
            low = middle + 1
        except ShareTooLarge as error:
            if middle == 1:
                smallest_size = error.size
            high = middle - 1
    if best is None:
        raise ShareTooLarge(
            f"Even the last turn is too long to share as a link: it needs {smallest_size} "
            f"characters and the limit is {limit}.",
            size=smallest_size,
            limit=limit,
        )
    token, kept = best
    return token, kept, total - kept


# === decoding ============================================================================
def _bounded_decompress(data: bytes, max_bytes: int) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        # max_length caps the output: a bomb stops here instead of filling memory.
        out = decompressor.decompress(data, max_bytes + 1)
    except zlib.error:
        raise ShareLinkMalformed(
            "This share link is garbled: its content is not readable."
        ) from None
    if len(out) > max_bytes:
        raise ShareTooLarge(
            f"This share link is too large to open: its content expands beyond {max_bytes} bytes.",
            size=len(out),
            limit=max_bytes,
        )
    if not decompressor.eof or decompressor.unused_data:
        raise ShareLinkMalformed("This share link is garbled: its content is incomplete.")
    return out


def _short_validation_summary(error: ValidationError) -> str:
    # Field locations and reasons only: never echo the (possibly large) input values.
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:3]:
        location = ".".join(str(p) for p in item["loc"]) or "content"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def _unsigned_token_error(token: str) -> ShareLinkError:
    """A token without a signature part: cut short, changed, or a link of format 1."""
    if len(token) < MIN_TOKEN_CHARS:
        return ShareLinkMalformed("This share link is too short to be a share link of this app.")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return ShareLinkTampered()
    if _looks_like_format_1(raw):
        # Format 1 (hand-written HMAC || zlib, no separator) was replaced by this one. Its
        # signature is not checked: the message only names the shape it has.
        return ShareLinkUnsupportedVersion(
            "This share link was made by an earlier version of the app, whose links this "
            "version cannot read. Ask for a new link."
        )
    return ShareLinkTampered()


def _looks_like_format_1(raw: bytes) -> bool:
    """0x01, a 32-byte MAC, then a zlib stream (whose 2-byte header is a multiple of 31)."""
    header = raw[33:35]
    return len(raw) > 35 and raw[0] == 1 and header[0] == 0x78 and int.from_bytes(header) % 31 == 0


def decode_share(
    token: str, secret: bytes, *, max_chars: int = MAX_DECODE_TOKEN_CHARS
) -> SharedConversation:
    """Verify and unpack a token made by `encode_share`; raises ShareLinkError subclasses."""
    signer = _signer(secret)
    if not isinstance(token, str):
        raise ShareLinkMalformed("This share link is garbled: the token is not text.")
    token = token.strip()
    if len(token) > max_chars:
        raise ShareTooLarge(
            f"This share link is too long to open: {len(token)} characters, the limit is "
            f"{max_chars}.",
            size=len(token),
            limit=max_chars,
        )
    if not token:
        raise ShareLinkMalformed("This share link is empty.")
    if not _TOKEN_ALPHABET.fullmatch(token):
        raise ShareLinkMalformed(
            "This share link is garbled: it contains characters a share link never has."
        )
    if "." not in token:
        raise _unsigned_token_error(token)
    try:
        signed_body = signer.unsign(token)
    except BadSignature:
        raise ShareLinkTampered() from None
    # base64 ignores the spare low bits of the last character, so a changed last character
    # can decode to the same signature. Only the canonical spelling of a token is accepted.
    if not hmac.compare_digest(signer.sign(signed_body), token.encode("ascii")):
        raise ShareLinkTampered()
    # Signed by this app, so the body is what _seal wrote; still checked with care below.
    try:
        body = base64_decode(signed_body)
    except BadData:
        raise ShareLinkMalformed(
            "This share link is garbled: its content is not readable."
        ) from None
    header, compressed = body[:1], body[1:]
    if header != TOKEN_FORMAT:
        number = header[0] if header else 0
        raise ShareLinkUnsupportedVersion(
            f"This share link uses token format {number}, which this version of the app "
            f"cannot read (it reads format {TOKEN_FORMAT[0]})."
        )
    payload = _bounded_decompress(compressed, MAX_JSON_BYTES)
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ShareLinkMalformed("This share link is garbled: its content is not JSON.") from None
    if not isinstance(data, dict):
        raise ShareLinkMalformed("This share link is garbled: its content is not an object.")
    version = data.get("v")
    if version != SHARE_FORMAT_VERSION:
        if isinstance(version, int) and not isinstance(version, bool):
            raise ShareLinkUnsupportedVersion(
                f"This share link was made in format v{version}; this version of the app "
                f"reads v{SHARE_FORMAT_VERSION}."
            )
        raise ShareLinkMalformed("This share link is garbled: it has no format version.")
    try:
        return SharedConversation.model_validate_json(payload, strict=True)
    except ValidationError as error:
        raise ShareLinkMalformed(
            f"This share link is garbled: {_short_validation_summary(error)}."
        ) from None


# === URLs ================================================================================
def share_url(
    base_url: str,
    token: str,
    *,
    param: str = SHARE_QUERY_PARAM,
    max_url_chars: int = MAX_URL_CHARS,
) -> str:
    """`base_url` with `?share=<token>` (other query parameters kept, an old share replaced).

    Raises ShareTooLarge when the whole URL would be longer than `max_url_chars`.
    """
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"share links need an absolute http(s) base URL, got {base_url!r} "
            "(set LLM_PUBLIC_URL, e.g. https://chat.example.com)"
        )
    if not _TOKEN_ALPHABET.fullmatch(token):
        raise ValueError("the share token must be URL-safe base64 as made by encode_share")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != param]
    # The token needs no escaping: its alphabet is URL-safe.
    new_query = "&".join(filter(None, [urlencode(query), f"{param}={token}"]))
    url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", new_query, parts.fragment))
    if len(url) > max_url_chars:
        raise ShareTooLarge(
            f"This share link would be {len(url)} characters long and the limit is "
            f"{max_url_chars}. Share only the last turns instead.",
            size=len(url),
            limit=max_url_chars,
        )
    return url


# === the signing key =====================================================================
class _HasShareSecret(Protocol):
    share_secret: str | None


def default_secret_path() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "serverless-llm-chat" / "share-secret"


def _read_secret_file(path: Path) -> bytes | None:
    try:
        value = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    return value if len(value) >= MIN_SECRET_BYTES else None


def _create_secret_file(path: Path) -> bytes:
    """Write a fresh key atomically with mode 0600; if another process won, use its key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32).encode("ascii")
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(value + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # atomic and never overwrites: first writer wins
        except FileExistsError:
            existing = _read_secret_file(path)
            if existing is not None:
                return existing
            os.replace(temp, path)  # an empty or short leftover file: replace it
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return value


def resolve_share_secret(settings: _HasShareSecret, *, secret_path: Path | None = None) -> bytes:
    """The key that signs share links.

    `settings.share_secret` (LLM_SHARE_SECRET) when set. Otherwise a random key kept in the
    user's cache folder (mode 0600), so links survive local restarts. Cloud Run instances do
    not share a disk: there LLM_SHARE_SECRET must be set, or links open only on the instance
    that made them. The key itself is never logged.
    """
    configured = settings.share_secret
    if configured is not None and configured.strip():
        value = configured.strip().encode("utf-8")
        if len(value) < MIN_SECRET_BYTES:
            raise ValueError(
                f"LLM_SHARE_SECRET is too short ({len(value)} bytes); use at least "
                f"{MIN_SECRET_BYTES}, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value
    path = secret_path or default_secret_path()
    stored = _read_secret_file(path)
    if stored is None:
        stored = _create_secret_file(path)
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
        logger.warning("Share-link key file %s was readable by others; set its mode to 0600", path)
    logger.warning(
        "LLM_SHARE_SECRET is not set: share links are signed with a key kept in %s. That "
        "works across local restarts; on Cloud Run set LLM_SHARE_SECRET so that every "
        "instance opens every link.",
        path,
    )
    return stored
