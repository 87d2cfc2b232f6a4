"""Share links made from the Chat and Compare tabs, and what they hold.

A link carries its conversation (compressed, signed: ui/share.py), so it opens after a
restart and on any instance that has the same LLM_SHARE_SECRET; nothing is stored. The base
of the link is LLM_PUBLIC_URL when set, else the address the browser used (Gradio's own
reading of the request, which honours X-Forwarded-Host/-Proto behind a proxy). A link that
is too long for a URL is made for the last turns that fit, and the notice says so.

This module converts between the Chatbot's display messages (replies with stats notes) and
the share format (replies carrying their stats and, when it verifies, the MAC of a reply
this server generated: ui/reply_mac.py), and mints links; ui/share_page.py lays out
the Share buttons and the read-only view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from catalog import find
from ui.chat_history import Message, ReplyFigures, is_note, read_stats_note, stats_note
from ui.compat.gradio_internals import request_origin
from ui.model_labels import label_for
from ui.render import banner_html as notice
from ui.reply_mac import ReplyClaim, ReplyMacs, note_tag, read_note_tag
from ui.settings import Settings
from ui.share import (
    ReplyStats,
    SharedColumn,
    SharedConversation,
    SharedMessage,
    ShareLinkError,
    count_turns,
    fit_to_share_limit,
    share_url,
)

# === conversions between the Chatbot's messages and the share format ====================
VERIFIED_MARK = "✓ Generated here by {model}"  # before a verified reply's figures
NOT_VERIFIED_TITLE = "Not verified: supplied by whoever shared this"
NOT_VERIFIED_TEXT = (
    "This site has no record of generating this reply as shown: whoever shared the link "
    "supplied it, and may have written or edited it."
)


def _claim(
    model: str, system_prompt: str, question: str, reply: str, stats: ReplyStats
) -> ReplyClaim:
    return ReplyClaim(model, system_prompt, question, reply, stats.model_dump(exclude_none=True))


def to_shared_messages(
    history: Sequence[Message],
    *,
    model: str = "",
    system_prompt: str = "",
    macs: ReplyMacs | None = None,
) -> list[SharedMessage]:
    """Display messages (with stats notes) as shared messages (stats on their replies).
    Error and "stopped" notes are left out: they are about this browser's session. A
    reply keeps the MAC of its stats note only if it verifies against what is shared
    (`model`: the column's; `system_prompt`: the shared one)."""
    shared: list[SharedMessage] = []
    question = ""
    for message in history:
        if is_note(message):
            figures = read_stats_note(message)
            last = shared[-1] if shared else None
            if figures and last is not None and last.role == "assistant" and last.stats is None:
                stats = ReplyStats(**figures)  # type: ignore[arg-type]
                update: dict[str, object] = {"stats": stats}
                tag = read_note_tag(message["metadata"].get("id"))
                if macs is not None and tag is not None:
                    mac, writer = tag
                    claim = _claim(writer, system_prompt, question, last.content, stats)
                    if macs.verify(claim, mac):
                        update |= {"mac": mac, "model": None if writer == model else writer}
                shared[-1] = last.model_copy(update=update)
            continue
        if message["role"] == "system":
            continue
        if message["role"] == "user":
            question = message["content"]
        shared.append(SharedMessage(role=message["role"], content=message["content"]))
    return shared


def to_display_messages(
    column: SharedColumn,
    *,
    system_prompt: str = "",
    macs: ReplyMacs | None = None,
    marked: bool = False,
) -> list[Message]:
    """The Chatbot messages for a shared column: replies get their stats line back, and
    those whose MAC verifies keep it (a copy shared again stays verified). `marked` (the
    shared view): each reply says whether this server generated it."""
    shown: list[Message] = []
    question = ""
    for message in column.messages:
        shown.append({"role": message.role, "content": message.content})
        if message.role == "user":
            question = message.content
        if message.role != "assistant":
            continue
        writer = message.model or column.model
        s = message.stats
        claim = _claim(writer, system_prompt, question, message.content, s) if s else None
        verified = macs is not None and claim is not None and macs.verify(claim, message.mac)
        note = None
        if s is not None:
            figures = ReplyFigures(
                ttft_s=s.ttft_s,
                total_s=s.total_s,
                tokens_per_s=s.tokens_per_s,
                eval_count=s.eval_count,
                load_s=s.load_s,
                model=writer,
            )
            note = stats_note(figures)
            if verified and message.mac is not None:
                note["metadata"]["id"] = note_tag(message.mac, writer)
        if marked and verified and note is not None:
            mark = VERIFIED_MARK.format(model=label_for(writer).display_name)
            note["metadata"]["title"] = f"{mark} · {note['metadata']['title']}"
        elif marked:
            claimed = f"\n\nFigures given with it: {note['metadata']['title']}." if note else ""
            note = {
                "role": "assistant",
                "content": NOT_VERIFIED_TEXT + claimed,
                "metadata": {"title": NOT_VERIFIED_TITLE, "status": "done"},
            }
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
    notice_html: str


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
            return ShareOutcome(url, notice(text, "warning"))
        text = (
            f"Link ready: whoever opens it sees this {what} read-only and can continue "
            "from a copy. The link itself holds the text, so anyone with it can read it."
        )
        return ShareOutcome(url, notice(text))
