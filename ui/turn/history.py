"""Chat history as the browser holds it, and what of it reaches the model.

The conversation lives in the browser (the Chatbot value, saved in a `gr.BrowserState`) and
comes back with every request, so it is untrusted input: `parse_history` checks its shape.

Display messages are Gradio message dicts. Two kinds of assistant messages:
- replies: `{"role": "assistant", "content": "..."}` - part of the conversation;
- notes: messages with `metadata["title"]` (Gradio shows them as a small collapsible line):
  the figures under a reply, or an error line (made by ui/view/notes.py). Notes are never
  sent to the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ui.errors import InputRejected

MAX_NOTE_ID_CHARS = 600  # a note's data (ui/turn/figures.py NoteData): figures, model, MAC

CHARS_PER_TOKEN = 4  # rough average for English text with these tokenizers
TOKENS_PER_MESSAGE = 4  # role markers and separators of chat templates
MAX_HISTORY_MESSAGES = 500  # far more than any context holds; bounds the work per request

Message = dict[str, Any]


class HistoryRejected(InputRejected):
    """The history sent by the client is malformed; `user_message` says how."""


# === parsing =============================================================================
def parse_history(raw: object) -> list[Message]:
    """Validate a Chatbot value (either Gradio's normalized form with content lists, or
    plain `{"role", "content": str}` dicts) and return plain display messages."""
    if raw is None:
        return []
    if isinstance(raw, dict) and "root" in raw:  # a serialized ChatbotDataMessages
        raw = raw["root"]
    if not isinstance(raw, list):
        raise HistoryRejected("The chat history must be a list of messages.")
    if len(raw) > MAX_HISTORY_MESSAGES:
        raise HistoryRejected(
            f"The chat history has {len(raw)} messages; the limit is {MAX_HISTORY_MESSAGES}. "
            "Clear the chat to start over."
        )
    history: list[Message] = []
    for position, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise HistoryRejected(f"Chat history entry {position} is not a message.")
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            raise HistoryRejected(
                f"Chat history entry {position} has role {role!r}; expected 'user' or 'assistant'."
            )
        text = _content_text(item.get("content"), position)
        message: Message = {"role": role, "content": text}
        metadata = item.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("title"), str):
            message["metadata"] = {
                k: v
                for k, v in metadata.items()
                if k in ("title", "status", "log", "duration") and v is not None
            }
            # A reply's note carries its figures and MAC as data (ui/turn/figures.py).
            data = metadata.get("id")
            if isinstance(data, str) and len(data) <= MAX_NOTE_ID_CHARS:
                message["metadata"]["id"] = data
        history.append(message)
    return history


def _content_text(content: object, position: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise HistoryRejected(f"Chat history entry {position} has no text.")
                parts.append(text)
            else:
                raise HistoryRejected(
                    f"Chat history entry {position} holds a file or component; "
                    "this chat handles text only."
                )
        return "".join(parts)
    raise HistoryRejected(f"Chat history entry {position} has no text content.")


def is_note(message: Message) -> bool:
    metadata = message.get("metadata")
    return isinstance(metadata, dict) and bool(metadata.get("title"))


def has_reply(history: Sequence[Message]) -> bool:
    """Whether a history holds a reply with text (notes do not count)."""
    return any(m["role"] == "assistant" and not is_note(m) and m["content"] for m in history)


# === what the model sees =================================================================
def conversation(history: Sequence[Message]) -> list[Message]:
    """The model-facing turns of a display history (notes and empty replies left out)."""
    turns: list[Message] = []
    for message in history:
        if is_note(message) or message["role"] == "system":
            continue
        if message["role"] == "assistant" and not message["content"].strip():
            continue
        turns.append({"role": message["role"], "content": message["content"]})
    return turns


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE


@dataclass
class FittedPrompt:
    messages: list[Message]  # system (if any) + kept turns, ready for /api/chat
    dropped: int = 0  # turns left out from the start
    estimated_tokens: int = 0


def fit_to_context(
    system_prompt: str, turns: Sequence[Message], *, context_tokens: int, reply_tokens: int
) -> FittedPrompt:
    """Drop the oldest turns until the prompt plus the reply fits the context window.

    The system prompt and the newest turn are always kept. The reply reserve is capped at
    half the context so that a large max-tokens does not squeeze the history to nothing.
    """
    budget = context_tokens - min(reply_tokens, context_tokens // 2)
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    used = sum(estimate_tokens(m["content"]) for m in system)
    kept: list[Message] = []
    for message in reversed(turns):
        cost = estimate_tokens(message["content"])
        if kept and used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    # Start on a user turn: a reply without its question confuses chat templates.
    while len(kept) > 1 and kept[0]["role"] != "user":
        used -= estimate_tokens(kept.pop(0)["content"])
    return FittedPrompt(system + kept, dropped=len(turns) - len(kept), estimated_tokens=used)


# === history edits ======================================================================
def split_last_user_turn(history: Sequence[Message]) -> tuple[list[Message], str | None]:
    """(history before the last user message, that message's text); (history, None) if
    there is no user message. Used by retry (resend it) and undo (give it back)."""
    for index in range(len(history) - 1, -1, -1):
        if history[index]["role"] == "user":
            return list(history[:index]), history[index]["content"]
    return list(history), None


def history_before(history: Sequence[Message], index: int) -> list[Message]:
    """Everything before display position `index` (for editing a sent message)."""
    if not 0 <= index < len(history):
        raise HistoryRejected(f"There is no message number {index + 1} to edit.")
    return list(history[:index])
