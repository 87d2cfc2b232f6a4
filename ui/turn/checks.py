"""A turn's input checks: what a page sends is checked before anything reaches a backend.

Every value comes from the browser (or any client of the queue API), so each is untrusted:
a wrong type or an impossible value raises `ui.errors.InputRejected` (or a subclass) with a
message for the user; a number outside its range is clamped, with a notice. The rate limit
and the vote quota are checked last (ui/turn/prepare.py), so a rejected request does not
count.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from catalog import normalize_tag
from ui.backend_access.labels import display_name
from ui.context import AppContext
from ui.errors import InputRejected
from ui.share.deep_links import MAX_COMPARE_MODELS, MIN_COMPARE_MODELS
from ui.turn.history import HistoryRejected, Message, parse_history
from ui.turn.images import ImageRejected, prepare_upload, upload_path
from ui.turn.scope import Scope
from ui.web.rate_limit import client_key

# Sampling parameter ranges (Ollama accepts these; the widgets use the same bounds).
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9  # also what Compare and Battle send (they have no top-p control)
DEFAULT_MAX_TOKENS = 512  # Chat
DEFAULT_COLUMNS_MAX_TOKENS = 256  # Compare and Battle: several replies to read at once
MODEL_LIST_DEADLINE_S = 5.0  # pickers fall back to the allow-list after this

EMPTY_MESSAGE_HINT = "Type a message first: empty messages are not sent."


def describe(value: object) -> str:
    """A short description of a wrong value for an error message."""
    if value is None:
        return "empty"
    return f"{type(value).__name__} {repr(value)[:40]}"


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


HUGE_INT = 10**15  # beyond any parameter; still exact as a float


def check_number(
    name: str, value: object, low: float, high: float, *, integer: bool = False
) -> tuple[float, str | None]:
    """A sampling parameter: wrong types are rejected, out-of-range values clamped with a
    notice. Returns (value, notice or None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputRejected(f"{name} must be a number, not {describe(value)}.")
    if isinstance(value, int) and abs(value) > HUGE_INT:
        # float() of an int beyond 1e308 raises OverflowError; such a number is clamped.
        edge = int(high if value > 0 else low) if integer else (high if value > 0 else low)
        digits = int(value.bit_length() * math.log10(2)) + 1
        return edge, f"{name} (a {digits}-digit number) is outside the allowed range; used {edge}."
    if not math.isfinite(value):
        raise InputRejected(f"{name} must be a finite number, not {value}.")
    number: float = round(value) if integer else float(value)
    notice = None
    if not low <= number <= high:
        clamped = min(max(number, low), high)
        shown_low, shown_high = (int(low), int(high)) if integer else (low, high)
        notice = (
            f"{name} {_fmt(value)} is outside {_fmt(shown_low)}–{_fmt(shown_high)}; "
            f"used {_fmt(clamped)}."
        )
        number = clamped
    return (int(number) if integer else number), notice


def check_message(ctx: AppContext, message: object) -> str | None:
    """The message to send, None if it is empty, or InputRejected."""
    if message is None:
        return None
    if not isinstance(message, str):
        raise InputRejected(f"The message must be text, not {describe(message)}.")
    if not message.strip():
        return None
    limit = ctx.settings.max_message_chars
    if len(message) > limit:
        raise InputRejected(
            f"Your message is {len(message):,} characters long; the limit is {limit:,}. "
            "Shorten it and send again."
        )
    return message


@dataclass(frozen=True)
class Parameters:
    """Checked generation parameters."""

    system_prompt: str  # "" = none
    options: dict[str, Any]  # Ollama options: temperature, top_p, num_predict
    notices: list[str]  # values that were clamped into range

    @property
    def max_tokens(self) -> int:
        return int(self.options["num_predict"])


def check_parameters(
    ctx: AppContext,
    system_prompt: object,
    temperature: object,
    top_p: object,
    max_tokens: object,
) -> Parameters:
    """The system prompt and the sampling options (out-of-range numbers clamped, with a
    notice). num_ctx is deliberately not sent: Ollama reloads a model whose context size
    changes, so the backend's own setting rules and `context_tokens` should match it."""
    if system_prompt is None:
        system_prompt = ""
    if not isinstance(system_prompt, str):
        raise InputRejected(f"The system prompt must be text, not {describe(system_prompt)}.")
    limit = ctx.settings.max_message_chars
    if len(system_prompt) > limit:
        raise InputRejected(
            f"The system prompt is {len(system_prompt):,} characters long; the limit is {limit:,}."
        )
    temp, n1 = check_number("Temperature", temperature, *TEMPERATURE_RANGE)
    top, n2 = check_number("Top-p", top_p, *TOP_P_RANGE)
    tokens_limit = ctx.settings.max_tokens_limit
    tokens, n3 = check_number("Max tokens", max_tokens, 1, tokens_limit, integer=True)
    options = {"temperature": temp, "top_p": top, "num_predict": int(tokens)}
    return Parameters(system_prompt, options, [n for n in (n1, n2, n3) if n])


def parse_model_list(value: object) -> list[str]:
    """A list of models (Compare): a list of names, or one comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise InputRejected(
            f"The models must be a list of model names, not {type(value).__name__}."
        )
    names = []
    for item in items:
        if not isinstance(item, str):
            raise InputRejected(f"Each model must be a model name, not {type(item).__name__}.")
        if item.strip():
            names.append(item.strip())
    return names


def check_model_count(names: Sequence[str]) -> None:
    """2-3 different models (Compare)."""
    if len(names) < MIN_COMPARE_MODELS:
        picked = f"you picked {len(names)}" if names else "none is picked"
        raise InputRejected(f"Pick at least {MIN_COMPARE_MODELS} models to compare ({picked}).")
    if len(names) > MAX_COMPARE_MODELS:
        raise InputRejected(
            f"Pick at most {MAX_COMPARE_MODELS} models to compare (you picked {len(names)})."
        )
    seen: set[str] = set()
    for name in names:
        key = normalize_tag(name)
        if key in seen:
            raise InputRejected(f"“{name}” is picked twice: pick different models to compare.")
        seen.add(key)


async def check_models(ctx: AppContext, models: object, *, several: bool) -> list[str]:
    """The model of a chat (`several=False`: `models` is one name) or the 2-3 models of a
    comparison (`several=True`: a list or a comma-separated string), each one usable."""
    if not several:
        return [await ctx.models.check(models)]
    names = parse_model_list(models)
    check_model_count(names)
    return [await ctx.models.check(name) for name in names]


BLIND_PAIR_CANNOT_SEE = (
    "The models of this battle cannot both see images: remove the image, or start a new "
    "battle to send one."
)


async def check_image(
    ctx: AppContext,
    raw: object,
    names: Sequence[str],
    histories: Sequence[Sequence[Message]] = (),
    *,
    blind: bool = False,
    resent: dict[str, str] | None = None,
) -> tuple[dict[str, str] | None, list[bool]]:
    """The attached image, checked and resized for the model (ui/turn/images.py), as a
    display message holds it (None: none attached), and whether each model sees images
    (asked only when an image is attached, sent again (`resent`: retry, edit) or in
    `histories`: a text turn costs nothing).
    An image for a model that cannot see is refused naming the model (`blind`, a battle:
    without naming either)."""
    attached = upload_path(raw) is not None
    earlier = resent is not None or any(
        "image" in message for history in histories for message in history
    )
    if not attached and not earlier:
        return None, [False] * len(names)
    sees = [await ctx.models.can_see(name) for name in names]
    if not attached:
        return None, sees
    blind_models = [name for name, can in zip(names, sees, strict=True) if not can]
    if blind_models and blind:
        raise ImageRejected(BLIND_PAIR_CANNOT_SEE)
    if blind_models:
        name = blind_models[0]
        raise ImageRejected(
            f"{display_name(name)} ({name}) cannot see images: remove the image, or pick a "
            "model that can."
        )
    max_bytes = ctx.settings.image_max_bytes
    # Decoding and resizing a photo takes tens of milliseconds of CPU: off the event loop.
    image = await asyncio.to_thread(prepare_upload, raw, max_bytes=max_bytes)
    return (image.ref() if image is not None else None), sees


def parse_histories(raw: Sequence[object]) -> list[list[Message]]:
    """Several columns' histories; an error names the column when there are several."""
    histories = []
    for position, value in enumerate(raw, start=1):
        try:
            histories.append(parse_history(value))
        except HistoryRejected as exc:
            if len(raw) == 1:
                raise
            raise HistoryRejected(f"Column {position}: {exc.user_message}") from None
    return histories


# A reply the app streamed is at most max_tokens_limit tokens; a token is a few characters
# (up to ~16 for long words, code, or escapes). Longer "replies" in a history were not
# written by a model through this app.
REPLY_CHARS_PER_TOKEN = 16


def check_history(
    ctx: AppContext, history: Sequence[Message], *, then: str = "Start a new conversation."
) -> None:
    """Every message of a history the browser sent back (or a file imported), checked like
    a new one: the user's against the message limit, replies against the longest reply
    possible. `then`: what the user can do about a message too long."""
    user_limit = ctx.settings.max_message_chars
    reply_limit = ctx.settings.max_tokens_limit * REPLY_CHARS_PER_TOKEN
    for position, message in enumerate(history, start=1):
        text = message.get("content") or ""
        limit = user_limit if message["role"] == "user" else reply_limit
        if isinstance(text, str) and len(text) > limit:
            who = "your message" if message["role"] == "user" else "a reply"
            raise HistoryRejected(
                f"Message {position} of the conversation ({who}) is {len(text):,} characters "
                f"long; the limit is {limit:,}. {then}"
            )


def check_rate(ctx: AppContext, request: Any, scope: Scope) -> None:
    """Count one request of this client against the per-minute limit of `scope`'s group
    (ui/turn/scope.py). Checked last: a rejected request does not count."""
    wait = ctx.limiter.acquire(scope.rate_key(client_key(request)))
    if wait is not None:
        raise InputRejected(
            f"Too many messages: the limit is {ctx.limiter.limit} per minute. "
            f"Try again in {math.ceil(wait)} s."
        )


def check_vote_quota(ctx: AppContext, request: Any) -> None:
    """Count one battle vote of this client against its daily cap (checked last)."""
    wait = ctx.vote_limiter.acquire(client_key(request))
    if wait is not None:
        raise InputRejected(
            f"You have voted {ctx.vote_limiter.limit} times in the last 24 hours, the most "
            f"one visitor may. Try again in {math.ceil(wait / 3600)} h."
        )
