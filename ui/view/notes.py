"""The notes under replies: how a reply's end, figures and notices read in a Chatbot.

A note is an assistant message with `metadata["title"]` (Gradio shows it as a small
collapsible line under the reply; ui/turn/history.py never sends it to a model). Made
here only, from the pipeline's data (ui/turn/reply.py `ColumnView`, ui/turn/figures.py
`ReplyFigures`): the figures under a reply, the stop note, the error note, notices. A
finished reply's note also carries its figures as data (`NoteData` in `metadata["id"]`),
which sharing reads back; nothing reads the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ui.backend_access.labels import display_name
from ui.backend_access.status import reply_cost_text
from ui.turn.figures import NoteData, ReplyCost, ReplyFigures
from ui.turn.history import Message, to_chatbot
from ui.turn.reply import ColumnView

WARNING_SIGN = "⚠"  # U+26A0 without the emoji selector: common text fonts have it
VERIFIED_MARK = "✓ Generated here by {model}"  # before a verified reply's figures
NOT_VERIFIED_TITLE = "Not verified: supplied by whoever shared this"
NOT_VERIFIED_TEXT = (
    "This site has no record of generating this reply as shown: whoever shared the link "
    "supplied it, and may have written or edited it."
)


def _warnings(notices: Sequence[str]) -> list[str]:
    return [f"{WARNING_SIGN} {notice}" for notice in notices]


def stats_note(
    figures: ReplyFigures,
    *,
    model: str | None = None,
    notices: Sequence[str] = (),
    cost: ReplyCost | None = None,
    data: NoteData | None = None,
) -> Message:
    """The note under a finished reply: its figures in the title, the details and notices
    below; `data` (the figures, the model, the MAC) rides along in the metadata id."""
    title = [
        f"{figures.ttft_s:.2f} s to first token" if figures.ttft_s is not None else None,
        f"{figures.tokens_per_s:.1f} tokens/s" if figures.tokens_per_s is not None else None,
        f"{figures.total_s:.2f} s total" if figures.total_s is not None else None,
        f"model load {figures.load_s:.2f} s" if figures.model_loaded else None,
        reply_cost_text(cost.price, cost.seconds) if cost is not None else None,
    ]
    details = []
    if figures.eval_count is not None:
        by = f" by {model}" if model else ""
        noun = "token" if figures.eval_count == 1 else "tokens"
        details.append(f"{figures.eval_count} {noun} generated{by}")
    if figures.prompt_tokens is not None:
        details.append(f"prompt {figures.prompt_tokens} tokens")
    if figures.done_reason == "length":
        details.append("stopped at the max-tokens limit")
    lines = [" · ".join(details)] if details else []
    lines += _warnings(notices)
    metadata: dict[str, Any] = {"title": " · ".join(t for t in title if t)}
    if not notices:
        metadata["status"] = "done"  # collapsed; notices keep it open so they are seen
    if data is not None:
        metadata["id"] = data.as_note_id()
    return {"role": "assistant", "content": "\n".join(lines), "metadata": metadata}


def stopped_note(figures: ReplyFigures | None, notices: Sequence[str] = ()) -> Message:
    """The note under a reply the user stopped (no Ollama stats: the stream was cut)."""
    title = ["Stopped"]
    if figures is not None and figures.ttft_s is not None:
        title.append(f"{figures.ttft_s:.2f} s to first token")
    if figures is not None and figures.total_s is not None:
        title.append(f"{figures.total_s:.2f} s total")
    lines = ["You stopped this reply, so it is incomplete.", *_warnings(notices)]
    return {
        "role": "assistant",
        "content": "\n".join(lines),
        "metadata": {"title": " · ".join(title), "status": "done"},
    }


def error_note(
    user_message: str, *, partial: bool, notices: Sequence[str] = (), retry_hint: bool = True
) -> Message:
    """The note under a reply that failed. `retry_hint`: the page has a retry button."""
    lines = []
    if partial:
        lines.append("The reply above is incomplete.")
    if retry_hint:
        lines.append("Your message is kept: press ↻ (retry) to send it again.")
    lines += _warnings(notices)
    return {
        "role": "assistant",
        "content": "\n".join(lines),
        "metadata": {"title": f"{WARNING_SIGN} {user_message}"},
    }


def notices_note(notices: Sequence[str]) -> Message:
    """A note holding only notices (a blind reply shows no figures before the vote)."""
    return {
        "role": "assistant",
        "content": "\n".join(_warnings(notices)),
        "metadata": {"title": f"{WARNING_SIGN} Notices"},
    }


def reply_note(view: ColumnView) -> Message | None:
    """The note under a column's reply once it ended (None while it streams, and under a
    blind reply without notices)."""
    if view.phase == "failed":
        partial = bool(view.text)
        return error_note(
            view.error or "", partial=partial, notices=view.notices, retry_hint=view.retry_hint
        )
    if view.phase == "stopped":
        return stopped_note(view.figures, view.notices)
    if view.phase != "done":
        return None
    if view.figures is None:  # blind
        return notices_note(view.notices) if view.notices else None
    data = NoteData(figures=view.figures, model=view.model, mac=view.mac)
    return stats_note(
        view.figures, model=view.model, notices=view.notices, cost=view.cost, data=data
    )


def column_messages(view: ColumnView) -> list[Message]:
    """A column's Chatbot value: the conversation, the reply so far, and its note."""
    shown = to_chatbot(view.display)
    if view.text:
        shown.append({"role": "assistant", "content": view.text})
    note = reply_note(view)
    return [*shown, note] if note is not None else shown


def shared_reply_note(data: NoteData | None, *, verified: bool, marked: bool) -> Message | None:
    """The note under a reply of a shared conversation (`data`: its figures and writer; its
    MAC only when `verified`, i.e. it checks out: ui/share/reply_mac.py). `marked` (the shared
    view): the note says whether this server generated the reply; unmarked (a copy to
    continue from), the note keeps its data, so a copy shared again stays verified."""
    note = stats_note(data.figures, model=data.model, data=data) if data is not None else None
    if marked and verified and note is not None and data is not None:
        mark = VERIFIED_MARK.format(model=display_name(data.model))
        note["metadata"]["title"] = f"{mark} · {note['metadata']['title']}"
    elif marked:
        claimed = f"\n\nFigures given with it: {note['metadata']['title']}." if note else ""
        note = {
            "role": "assistant",
            "content": NOT_VERIFIED_TEXT + claimed,
            "metadata": {"title": NOT_VERIFIED_TITLE, "status": "done"},
        }
    return note
