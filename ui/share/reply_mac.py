"""Which replies this server generated: a MAC made when a reply's stream ended.

A share link is signed by the server (ui/share/format.py), but /share_chat signs whatever history
the sharer's browser sends, so the link's signature says nothing about who wrote a reply.
So when a reply streams to its end, ui/turn/ makes an HMAC-SHA256 (stdlib `hmac`) over
what a reader of the shared view would take as this server's word:

    the model tag, the system prompt, the question (the user message the reply answers),
    the sha256 of the image sent with that question (when there was one: the digest of
    the bytes the model got, ui/turn/images.py), the reply's text, and its figures as the
    stats note shows them

and puts it, with the model and the figures, in the data of the note under the reply
(ui/turn/figures.py `NoteData`: the browser sends it back with the history). /share_chat
keeps the MACs that verify and drops the others; the shared view checks them again and
marks each reply "generated here" or "not verified" (ui/share/service.py).

The key is derived from the share-link secret (LLM_SHARE_SECRET) with HKDF-SHA256 and a
label of its own, so it is neither the key that signs share links nor the battle key
(ui/votes/battle_token.py). Only the MAC reaches the browser. It is truncated to 128 bits
(22 base64 characters) to keep links short; forging one still takes 2^128 guesses, each
a request.

Texts are compared as Gradio shows them: its Chatbot passes every text through
`inspect.cleandoc` each time it sends a history to the browser (common indentation and
leading and trailing blank lines removed), and that is not idempotent, so a text is taken
at the fixed point of cleandoc. Any other change (one character) breaks the MAC.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import inspect
import json
import re
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from catalog import normalize_tag
from ui.turn.figures import ReplyFigures

KEY_LABEL: Final = b"serverless-llm-chat/reply-mac/hmac-sha256"
MAC_BYTES: Final = 16  # 128 bits: 22 URL-safe base64 characters
MAC_CHARS: Final = 22
MAC_PATTERN: Final = r"^[A-Za-z0-9_-]{22}$"
MAC_SHAPE: Final = re.compile(MAC_PATTERN)
FORMAT: Final = 1  # in the MAC'd message, so a later layout never verifies as this one
MIN_SECRET_BYTES: Final = 16

# How the note under a reply shows each figure it binds (ui/view/notes.py `stats_note`): a
# figure is bound as shown, so 1.234 s and 1.23 s are the same claim and 1.24 s another one.
# Its keys are ui/turn/figures.py's BOUND_FIELDS (a test holds them equal).
FIGURE_FORMATS: Final = {
    "ttft_s": ".2f",
    "tokens_per_s": ".1f",
    "total_s": ".2f",
    "load_s": ".2f",
    "eval_count": "d",
}
CLEANDOC_PASSES: Final = 8  # cleandoc reaches its fixed point in 2-3 passes


def shown_text(text: str) -> str:
    """`text` as Gradio's Chatbot ends up showing it (cleandoc until nothing changes;
    each pass after the first only removes characters, so this ends)."""
    for _ in range(CLEANDOC_PASSES):
        cleaned = inspect.cleandoc(text)
        if cleaned == text:
            break
        text = cleaned
    return text


def _figure(name: str, value: float | int) -> str:
    return format(int(value) if FIGURE_FORMATS[name] == "d" else float(value), FIGURE_FORMATS[name])


@dataclass(frozen=True)
class ReplyClaim:
    """What a MAC vouches for: this model, with this system prompt, answered this question
    with this text, and these figures were measured."""

    model: str
    system_prompt: str
    question: str
    reply: str
    figures: ReplyFigures  # only its bound figures count (ReplyFigures.bound)
    image: str | None = None  # sha256 (hex) of the question's image, as sent to the model

    def message(self) -> bytes:
        """The bytes the MAC is made over: one JSON array, so no field can run into
        another."""
        bound = self.figures.bound()
        figures = {
            name: _figure(name, value)
            for name in sorted(FIGURE_FORMATS)
            if (value := getattr(bound, name)) is not None
        }
        system = self.system_prompt if self.system_prompt.strip() else ""
        fields = [
            FORMAT,
            normalize_tag(self.model),
            shown_text(system),
            shown_text(self.question),
            shown_text(self.reply),
            figures,
        ]
        if self.image is not None:  # absent for text: MACs made before images still verify
            fields.append({"image": self.image})
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@functools.lru_cache(maxsize=4)
def _derive_key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_LABEL).derive(secret)


class ReplyMacs:
    """Makes and checks reply MACs with a key derived from `secret` (never shown)."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the reply MAC key must be at least {MIN_SECRET_BYTES} bytes")
        self._key = _derive_key(secret)

    def mac(self, claim: ReplyClaim) -> str:
        digest = hmac.new(self._key, claim.message(), hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def verify(self, claim: ReplyClaim, mac: object) -> bool:
        if not isinstance(mac, str) or not MAC_SHAPE.fullmatch(mac):
            return False
        return hmac.compare_digest(self.mac(claim), mac)
