"""A checked turn, ready to stream: the request is counted, each column's prompt fitted.

`prepare` runs after every input check passed (ui/turn/checks.py): it takes this client's
stream lease (at most `streams_per_client` replies at once, on all tabs together), counts
the request against its scope's rate limit (ui/turn/scope.py), and for each column adds the
user's message and fits the conversation into the model's context (the oldest turns are
left out, with a notice; the history shown keeps everything).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ui.backend_access.labels import display_name
from ui.context import AppContext
from ui.errors import InputRejected
from ui.turn.checks import Parameters, check_history, check_rate
from ui.turn.history import Message, conversation, fit_to_context
from ui.turn.images import history_image_bytes
from ui.turn.scope import Scope
from ui.web.rate_limit import StreamLease, client_key


@dataclass(frozen=True)
class ColumnRequest:
    """One column of a turn: one model, its conversation, what the backend gets."""

    model: str
    display: list[Message]  # the history to show, ending with the user's new message
    messages: list[Message]  # what the backend gets: system + fitted turns
    label: str  # how texts shown to the user name the model ("Model A" when blind)
    blind: bool = False  # battles: no model name in banners, notes or errors, no figures
    notices: list[str] = field(default_factory=list)  # shown in the note under the reply


@dataclass(frozen=True)
class PreparedTurn:
    """A checked turn, ready to stream."""

    columns: list[ColumnRequest]
    options: dict[str, Any]
    notices: list[str]  # about the whole turn (clamped parameters); also in every note
    stop_key: str | None  # the Stop button finds the running turn by it (Scope.stop_key)
    retry_hint: bool = False  # error notes say "press ↻ (retry)" (the Chat has the button)
    lease: StreamLease | None = None  # this client's streams, given back when it ends
    client: str = "unknown"  # who asks (ui/web/rate_limit.py): the models' slots are shared by it
    session: str | None = None  # Gradio's session: its event stream must be open


@dataclass(frozen=True)
class Column:
    """What `prepare` needs to know about one column."""

    model: str
    history: list[Message]  # the conversation so far, as shown
    label: str | None = None  # None: the model's display name
    blind: bool = False
    sees: bool = False  # takes images: earlier images are sent to it (ui/turn/images.py)


def dropped_notice(ctx: AppContext, dropped: int) -> str:
    plural = "s" if dropped > 1 else ""
    return (
        f"The {dropped} oldest message{plural} were left out to fit the model's context "
        f"(about {ctx.settings.context_tokens:,} tokens)."
    )


def with_images(
    ctx: AppContext, messages: list[Message], *, sees: bool
) -> tuple[list[Message], str | None]:
    """The backend's messages with each image as Ollama takes it (`images`: the bytes, which
    the ollama client sends base64-encoded), and a notice when images were left out: the
    model cannot see, or an earlier image is no longer on this server (a restart, another
    instance). The new message's image was checked already (ui/turn/checks.py)."""
    sent: list[Message] = []
    left_out = 0
    for message in messages:
        image = message.get("image")
        plain = {k: v for k, v in message.items() if k != "image"}
        if image is not None:
            data = history_image_bytes(image["path"], max_bytes=ctx.settings.image_max_bytes)
            if sees and data is not None:
                plain["images"] = [data]
            else:
                left_out += 1
        sent.append(plain)
    if not left_out:
        return sent, None
    which = "An earlier image was" if left_out == 1 else f"{left_out} earlier images were"
    why = "this model cannot see images" if not sees else "no longer on this server"
    return sent, f"{which} left out ({why}): the model got the text of those messages only."


def session_of(request: object) -> str | None:
    """Gradio's session hash (one per page load): the Stop button finds streams by it."""
    return getattr(request, "session_hash", None) if request is not None else None


def prepare(
    ctx: AppContext,
    text: str,
    params: Parameters,
    columns: Sequence[Column],
    *,
    request: Any,
    scope: Scope,
    retry_hint: bool = False,
    image: dict[str, str] | None = None,
) -> PreparedTurn:
    """The last step before streaming, after every check passed (see the module docstring).
    Raises InputRejected when the client has too many replies running or is over its
    scope's rate limit."""
    for column in columns:
        check_history(ctx, column.history)
    client = client_key(request)
    lease = ctx.streams.acquire(client, len(columns))
    if lease is None:
        raise InputRejected(
            f"You already have {ctx.streams.active(client)} replies being "
            f"written (at most {ctx.streams.limit} at once, on all tabs together). Wait for "
            "them to finish, or press Stop."
        )
    try:
        check_rate(ctx, request, scope)
    except InputRejected:
        lease.release()
        raise
    prepared = []
    for column in columns:
        new: Message = {"role": "user", "content": text}
        if image is not None:
            new["image"] = image
        display = [*column.history, new]
        fitted = fit_to_context(
            params.system_prompt,
            conversation(display),
            context_tokens=ctx.settings.context_tokens,
            reply_tokens=params.max_tokens,
        )
        notices = [*params.notices]
        if fitted.dropped:
            notices.append(dropped_notice(ctx, fitted.dropped))
        messages, image_notice = with_images(ctx, fitted.messages, sees=column.sees)
        if image_notice:
            notices.append(image_notice)
        label = column.label or display_name(column.model)
        prepared.append(
            ColumnRequest(column.model, display, messages, label, column.blind, notices)
        )
    session = session_of(request)
    stop_key = scope.stop_key(session) if session else None
    return PreparedTurn(
        prepared, params.options, list(params.notices), stop_key, retry_hint, lease, client, session
    )
