"""Chat history as the browser holds it, and what of it reaches the model.

The conversation lives in the browser (the Chatbot value, saved in a `gr.BrowserState`) and
comes back with every request, so it is untrusted input: `parse_history` checks its shape.

Display messages are Gradio message dicts. Two kinds of assistant messages:
- replies: `{"role": "assistant", "content": "..."}` - part of the conversation;
- notes: messages with `metadata["title"]` (Gradio shows them as a small collapsible line):
  the figures under a reply, or an error line (made by ui/view/notes.py). Notes are never
  sent to the model.

A user message may carry one image (ui/turn/images.py). The browser holds it as Gradio's
file part next to the text, `{"type": "file", "file": {"path", "mime_type", ...},
"alt_text"}` (its path in Gradio's upload folder); here it is `message["image"] =
{"path", "mime_type"}` beside the text `content`, and `to_chatbot` gives the part back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ui.errors import InputRejected

MAX_NOTE_ID_CHARS = 600  # a note's data (ui/turn/figures.py NoteData): figures, model, MAC

CHARS_PER_TOKEN = 4  # rough average for English text with these tokenizers
TOKENS_PER_MESSAGE = 4  # role markers and separators of chat templates
MAX_HISTORY_MESSAGES = 500  # far more than any context holds; bounds the work per request
# What Ollama counts for an image when it fits a prompt to the context (ollama/ollama
# v0.24.0 server/prompt.go chatPrompt: `imageNumTokens := 768`).
TOKENS_PER_IMAGE = 768
MAX_PATH_CHARS = 1000
IMAGE_ALT_TEXT = "Image sent with this message"
# How ui/turn/images.py names an image it sent: the sha256 of its bytes.
SENT_IMAGE_NAME = re.compile(r"^([0-9a-f]{64})\.(png|jpg)$")
# The images a message may hold (ui/turn/images.py sends PNG and JPEG; an imported chat may
# bring the other two, which reach the model only once sent again as an attachment).
IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
}

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
        text, image = _content_text(item.get("content"), position)
        message: Message = {"role": role, "content": text}
        if image is not None:
            if role != "user":
                raise HistoryRejected(
                    f"Chat history entry {position}: only your messages hold images."
                )
            message["image"] = image
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


def _content_text(content: object, position: int) -> tuple[str, dict[str, str] | None]:
    """(the text, the image `{"path", "mime_type"}` or None) of a message's content."""
    if isinstance(content, str):
        return content, None
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        parts: list[str] = []
        image: dict[str, str] | None = None
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise HistoryRejected(f"Chat history entry {position} has no text.")
                parts.append(text)
            elif image is None and (found := _image_part(part)) is not None:
                image = found
            else:
                raise HistoryRejected(
                    f"Chat history entry {position} holds a file or component that is not "
                    "one image; this chat handles text and one image per message."
                )
        return "".join(parts), image
    raise HistoryRejected(f"Chat history entry {position} has no text content.")


def _image_part(part: object) -> dict[str, str] | None:
    """The image of a Gradio file part, or None when `part` is not an image file."""
    if not isinstance(part, dict) or part.get("type") != "file":
        return None
    file = part.get("file")
    if not isinstance(file, dict):
        return None
    path = file.get("path")
    if not isinstance(path, str) or not 0 < len(path) <= MAX_PATH_CHARS:
        return None
    # Gradio drops `mime_type` when it copies a file into its cache: the name says it.
    mime = IMAGE_TYPES.get(path.rsplit(".", 1)[-1].lower())
    return {"path": path, "mime_type": mime} if mime else None


def file_part(path: str, mime_type: str) -> dict[str, Any]:
    """A Gradio Chatbot file part: `{"type": "file", "file": FileData, "alt_text"}`."""
    return {
        "type": "file",
        "file": {"path": path, "mime_type": mime_type, "meta": {"_type": "gradio.FileData"}},
        "alt_text": IMAGE_ALT_TEXT,
    }


def image_digest(path: str) -> str | None:
    """The sha256 of an image this app sent, from its saved name; None for any other file
    (it was not prepared here, so no MAC can bind it)."""
    match = SENT_IMAGE_NAME.match(path.replace("\\", "/").rsplit("/", 1)[-1])
    return match.group(1) if match else None


def to_chatbot(history: Sequence[Message]) -> list[Message]:
    """Display messages as the Chatbot takes them: a message with an image gets its text
    and its file part (the shape the module docstring describes)."""
    shown: list[Message] = []
    for message in history:
        image = message.get("image")
        if image is None:
            shown.append(message)
            continue
        rest = {k: v for k, v in message.items() if k not in ("image", "content")}
        parts = [file_part(image["path"], image["mime_type"])]
        if message["content"]:
            parts.insert(0, {"type": "text", "text": message["content"]})
        shown.append({**rest, "content": parts})
    return shown


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
        turn: Message = {"role": message["role"], "content": message["content"]}
        if "image" in message:
            turn["image"] = message["image"]
        turns.append(turn)
    return turns


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE


def message_tokens(message: Message) -> int:
    """A turn's estimated share of the context: its text and its image, if any."""
    image = TOKENS_PER_IMAGE if message.get("image") else 0
    return estimate_tokens(message["content"]) + image


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
    used = sum(message_tokens(m) for m in system)
    kept: list[Message] = []
    for message in reversed(turns):
        cost = message_tokens(message)
        if kept and used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    # Start on a user turn: a reply without its question confuses chat templates.
    while len(kept) > 1 and kept[0]["role"] != "user":
        used -= message_tokens(kept.pop(0))
    return FittedPrompt(system + kept, dropped=len(turns) - len(kept), estimated_tokens=used)


# === history edits ======================================================================
def split_last_user_turn(history: Sequence[Message]) -> tuple[list[Message], str | None]:
    """(history before the last user message, that message's text); (history, None) if
    there is no user message. Used by retry (resend it) and undo (give it back)."""
    earlier, message = split_last_user_message(history)
    return earlier, (message["content"] if message is not None else None)


def split_last_user_message(history: Sequence[Message]) -> tuple[list[Message], Message | None]:
    """Like `split_last_user_turn`, with the whole message (its image too)."""
    for index in range(len(history) - 1, -1, -1):
        if history[index]["role"] == "user":
            return list(history[:index]), history[index]
    return list(history), None


def history_before(history: Sequence[Message], index: int) -> list[Message]:
    """Everything before display position `index` (for editing a sent message)."""
    if not 0 <= index < len(history):
        raise HistoryRejected(f"There is no message number {index + 1} to edit.")
    return list(history[:index])
