"""Share links made from the Chat and Compare tabs, and what they hold.

A link carries its conversation (compressed, signed: ui/share/format.py), so it opens after a
restart and on any instance that has the same LLM_SHARE_SECRET; nothing is stored. The base
of the link is LLM_PUBLIC_URL when set, else the address the browser used (Gradio's own
reading of the request, which honours X-Forwarded-Host/-Proto behind a proxy). A link that
is too long for a URL is made for the last turns that fit, and the notice says so.

This module converts between the Chatbot's display messages (replies with notes that carry
their figures as data: ui/turn/figures.py `NoteData`) and the share format (replies carrying
their figures and, when it verifies, the MAC of a reply this server generated:
ui/share/reply_mac.py), and mints links; ui/pages/share.py lays out the Share buttons and the
read-only view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from catalog import find
from ui.compat.gradio_internals import request_origin
from ui.settings import Settings
from ui.share.format import (
    SharedColumn,
    SharedConversation,
    SharedMessage,
    ShareLinkError,
    count_turns,
    fit_to_share_limit,
    share_url,
)
from ui.share.reply_mac import ReplyClaim, ReplyMacs
from ui.turn.figures import NoteData, read_note_data
from ui.turn.history import Message, image_digest, is_note
from ui.view.notes import shared_reply_note

# What a shared conversation shows where an image was sent: a link cannot carry the image
# (a 1 MB picture in a URL), only its digest.
IMAGE_PLACEHOLDER = "[image]"


# === conversions between the Chatbot's messages and the share format ====================
def to_shared_messages(
    history: Sequence[Message],
    *,
    model: str = "",
    system_prompt: str = "",
    macs: ReplyMacs | None = None,
) -> list[SharedMessage]:
    """Display messages (replies with their notes) as shared messages (figures on their
    replies). Error and "stopped" notes are left out: they are about this browser's session
    (they carry no data). A reply keeps the MAC in its note's data only if it verifies
    against what is shared (`model`: the column's; `system_prompt`: the shared one)."""
    shared: list[SharedMessage] = []
    question, image = "", None
    for message in history:
        if is_note(message):
            data = read_note_data(message)
            last = shared[-1] if shared else None
            if data and last is not None and last.role == "assistant" and last.stats is None:
                figures = data.figures.bound()  # what a share carries and a MAC binds
                update: dict[str, object] = {"stats": figures}
                if macs is not None and data.mac is not None:
                    claim = ReplyClaim(
                        data.model, system_prompt, question, last.content, figures, image
                    )
                    if macs.verify(claim, data.mac):
                        writer = data.model
                        update |= {"mac": data.mac, "model": None if writer == model else writer}
                shared[-1] = last.model_copy(update=update)
            continue
        if message["role"] == "system":
            continue
        digest = None
        if message["role"] == "user":
            question = message["content"]
            sent = message.get("image")
            image = digest = image_digest(sent["path"]) if sent else None
        shared.append(SharedMessage(role=message["role"], content=message["content"], image=digest))
    return shared


def to_display_messages(
    column: SharedColumn,
    *,
    system_prompt: str = "",
    macs: ReplyMacs | None = None,
    marked: bool = False,
) -> list[Message]:
    """The Chatbot messages for a shared column: replies get their note back, and those
    whose MAC verifies keep it (a copy shared again stays verified). `marked` (the shared
    view): each reply says whether this server generated it."""
    shown: list[Message] = []
    question, image = "", None
    for message in column.messages:
        text = message.content
        if message.image is not None:
            text = f"{IMAGE_PLACEHOLDER} {text}" if text else IMAGE_PLACEHOLDER
        shown.append({"role": message.role, "content": text})
        if message.role == "user":
            question, image = message.content, message.image
        if message.role != "assistant":
            continue
        writer = message.model or column.model
        figures = message.stats
        claim = (
            ReplyClaim(writer, system_prompt, question, message.content, figures, image)
            if figures
            else None
        )
        verified = macs is not None and claim is not None and macs.verify(claim, message.mac)
        data = (
            NoteData(figures=figures, model=writer, mac=message.mac if verified else None)
            if figures is not None
            else None
        )
        note = shared_reply_note(data, verified=verified, marked=marked)
        if note is not None:
            shown.append(note)
    return shown


def shared_column(
    model: str,
    history: Sequence[Message],
    *,
    system_prompt: str = "",
    macs: ReplyMacs | None = None,
) -> SharedColumn:
    # The catalog's name, when it has one (a reader of the link may run another catalog).
    spec = find(model)
    return SharedColumn(
        model=model,
        display_name=spec.display_name if spec else None,
        messages=to_shared_messages(history, model=model, system_prompt=system_prompt, macs=macs),
    )


# === making links ========================================================================
def request_base_url(request: Any) -> str | None:
    """The app's root URL as the browser reached it (None if it cannot be told)."""
    raw = getattr(request, "request", None) if request is not None else None
    if raw is None:
        return None
    try:
        path = urlsplit(str(raw.url)).path
        cut = path.find("/gradio_api/")
        route = path[cut:] if cut >= 0 else path
        return request_origin(raw, route).rstrip("/") + "/"
    except (AttributeError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class ShareOutcome:
    url: str
    notice: str  # what the page says about the link
    kind: str = "info"  # the banner's kind: info, or warning when turns were left out


class ShareService:
    """Mints share links; holds the signing key (it never leaves the server)."""

    def __init__(self, settings: Settings, secret: bytes, macs: ReplyMacs) -> None:
        self.settings = settings
        self.secret = secret
        self.macs = macs  # checks which replies this server generated

    def base_url(self, request: Any) -> str:
        if self.settings.public_url:
            return self.settings.public_url
        found = request_base_url(request)
        if found is None:
            raise ShareLinkError(
                "The app's public address is unknown, so no link can be made: set "
                "LLM_PUBLIC_URL (e.g. https://chat.example.com)."
            )
        return found

    def link(self, conv: SharedConversation, request: Any) -> ShareOutcome:
        """A link for `conv`, or for its last turns when all of it does not fit."""
        total = count_turns(conv)
        token, kept, dropped = fit_to_share_limit(conv, self.secret)
        url = share_url(self.base_url(request), token)
        what = "comparison" if conv.kind == "compare" else "conversation"
        if dropped:
            text = (
                f"This {what} is too long to fit in one link ({total} turns), so this link "
                f"shares only the last {kept} turn{'s' if kept != 1 else ''}."
            )
            return ShareOutcome(url, text, "warning")
        text = (
            f"Link ready: whoever opens it sees this {what} read-only and can continue "
            "from a copy. The link itself holds the text, so anyone with it can read it."
        )
        return ShareOutcome(url, text)
