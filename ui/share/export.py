"""Export a conversation as a file (Markdown to read, JSON to keep and import back), and read
an imported JSON file back into Chatbot messages. The one wire schema of the JSON file.

What a JSON export holds (`ConversationExport`, format version 1)::

    {"format": "serverless-llm-chat/conversation", "version": 1, "kind": "chat" | "compare",
     "exported_at": "2026-12-07T13:04:00Z",
     "parameters": {"system_prompt", "temperature", "top_p", "max_tokens"},
     "columns": [{"model": "smollm2:135m", "messages": [
         {"type": "message", "role": "user" | "assistant",
          "content": [{"type": "text", "text": "..."},
                      {"type": "file", "mime_type": "image/png", "name": "cat.png",
                       "data_url": "data:image/png;base64,..."}]},
         {"type": "note", "title": "0.21 s to first token · ...", "text": "...",
          "status": "done", "reply": {"figures": {...}, "model": "...", "mac": "..."}}]}]}

Every Chatbot message is one entry, in order, so an import restores the chat exactly. A note
(the line under a reply: its figures, "Stopped", an error) keeps its title and text, and a
finished reply's note keeps its data (`NoteData`: the figures, the model that wrote it, the
server's MAC over the reply, ui/share/reply_mac.py, which is checked again if the imported chat
is shared). A file part (an image in a user message) is kept as a data URL, so the file
carries it; on import it is written back to a file Gradio serves. Chat has one column;
Compare has one per model (2-3). The Markdown export is for reading: headings per speaker,
notes as quoted lines under their reply, a file as `[image: NAME]` (its bytes are only in
the JSON).

Imports are untrusted: the file is validated strictly (`extra="forbid"`, strict types,
the format and version first), capped in size (`import_limit_bytes`: what fits in one
request under LLM_MAX_REQUEST_BYTES), and every problem raises `ImportRejected` with a
message naming it; the page then changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import mimetypes
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from ui.backend_access.labels import display_name  # the one way a model is named
from ui.errors import InputRejected
from ui.share.deep_links import MAX_COMPARE_MODELS, MIN_COMPARE_MODELS
from ui.turn.figures import MAX_MODEL_CHARS, NoteData, read_note_data
from ui.turn.history import IMAGE_TYPES, MAX_HISTORY_MESSAGES, Message, is_note, parse_history

logger = logging.getLogger(__name__)

EXPORT_FORMAT: Final = "serverless-llm-chat/conversation"
EXPORT_VERSION: Final = 1
# The file types a file part may have: the images a message may hold (ui/turn/history.py).
# Nothing else is written back to a file this origin serves on import (an SVG or HTML file
# could run script there).
FILE_TYPES: Final = {mime: f".{ext}" for ext, mime in IMAGE_TYPES.items() if ext != "jpeg"}
FileType = Literal["image/png", "image/jpeg", "image/webp", "image/gif"]
MAX_FILE_BYTES: Final = 10 * 1024 * 1024  # one file part, before base64 (the image cap)
MAX_NOTE_TITLE_CHARS: Final = 2000
MAX_FILE_NAME_CHARS: Final = 255
# Room in one request for what wraps the file: Gradio's queue-join JSON (event and session
# ids, ~200 bytes), the file's name and size, and the data URL's prefix.
REQUEST_ENVELOPE_BYTES: Final = 4096


def import_limit_bytes(max_request_bytes: int) -> int:
    """The largest file an import takes: the page sends it base64-encoded (4 bytes per 3,
    no JSON escaping) in one request, which must stay under the body cap
    (ui/web/request_limits.py), so an import at the limit is never refused by the cap."""
    return (max_request_bytes - REQUEST_ENVELOPE_BYTES) * 3 // 4


def _sniffed_type(data: bytes) -> str | None:
    """The image type the bytes' signature says (PNG, JPEG, GIF and WebP signatures)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


# === the wire schema =====================================================================
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FilePart(_Strict):
    """A file in a message, its bytes in a data URL; the bytes must be of the type it says."""

    type: Literal["file"]
    mime_type: FileType
    name: str | None = Field(default=None, max_length=MAX_FILE_NAME_CHARS)
    data_url: str = Field(max_length=len("data:image/webp;base64,") + MAX_FILE_BYTES * 4 // 3 + 4)

    @model_validator(mode="after")
    def _bytes_match_type(self) -> FilePart:
        prefix = f"data:{self.mime_type};base64,"
        if not self.data_url.startswith(prefix):
            raise ValueError(f"its data URL does not start with {prefix!r}")
        if _sniffed_type(self.data) != self.mime_type:
            raise ValueError(f"its bytes are not of type {self.mime_type}")
        return self

    @property
    def data(self) -> bytes:
        try:
            return base64.b64decode(self.data_url.partition(",")[2], validate=True)
        except binascii.Error:
            raise ValueError("its data URL is not valid base64") from None

    @classmethod
    def of_bytes(cls, data: bytes, mime_type: str, name: str | None) -> FilePart:
        encoded = base64.b64encode(data).decode("ascii")
        return cls(
            type="file", mime_type=mime_type, name=name,  # type: ignore[arg-type]
            data_url=f"data:{mime_type};base64,{encoded}",
        )  # fmt: skip


Part = Annotated[TextPart | FilePart, Field(discriminator="type")]


class ExportedMessage(_Strict):
    type: Literal["message"]
    role: Literal["user", "assistant"]
    content: list[Part] = Field(min_length=1)

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class ExportedNote(_Strict):
    """A note under a reply (ui/view/notes.py): its title and text as shown, and for a
    finished reply its data."""

    type: Literal["note"]
    title: str = Field(min_length=1, max_length=MAX_NOTE_TITLE_CHARS)
    text: str
    status: Literal["pending", "done"] | None = None
    reply: NoteData | None = None


Entry = Annotated[ExportedMessage | ExportedNote, Field(discriminator="type")]


class ExportedColumn(_Strict):
    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    messages: list[Entry] = Field(max_length=MAX_HISTORY_MESSAGES)


class ExportedParameters(_Strict):
    system_prompt: str
    temperature: float
    top_p: float
    max_tokens: int


class ConversationExport(_Strict):
    format: Literal["serverless-llm-chat/conversation"]
    version: Literal[1]
    kind: Literal["chat", "compare"]
    exported_at: AwareDatetime
    parameters: ExportedParameters
    columns: list[ExportedColumn] = Field(min_length=1, max_length=MAX_COMPARE_MODELS)

    @model_validator(mode="after")
    def _columns_fit_kind(self) -> ConversationExport:
        if self.kind == "chat" and len(self.columns) != 1:
            raise ValueError("a chat export has one column")
        if self.kind == "compare" and len(self.columns) < MIN_COMPARE_MODELS:
            raise ValueError(f"a comparison export has {MIN_COMPARE_MODELS}-3 columns")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)


# === export: the Chatbot's messages to the schema ========================================
# Reads a file part's bytes: (path in the Chatbot value) -> bytes, or None when this server
# does not have it (ui/pages/export.py reads only inside Gradio's cache).
FileReader = Callable[[str], bytes | None]


def _file_of(part: object) -> dict[str, Any] | None:
    """A Gradio file part as its FileData dict: `{"type": "file", "file": {...}}` (the
    browser's form) or a bare `{"path": ..., "mime_type": ...}` (a handler's form)."""
    if not isinstance(part, dict):
        return None
    if part.get("type") == "file" and isinstance(part.get("file"), dict):
        return part["file"]
    if "path" in part and part.get("type") in (None, "file"):
        return part
    return None


def _parts_of(content: object) -> list[object]:
    if isinstance(content, list):
        return content
    return [content]


def _text_of(part: object) -> str:
    """A text part's text (parse_history has let only strings and text parts through)."""
    if isinstance(part, dict):
        return str(part.get("text", ""))
    return str(part)


def _without_files(raw: object) -> object:
    """The history with file parts taken out, for ui/turn/history.py's checks of the rest."""
    if not isinstance(raw, list):
        return raw
    stripped = []
    for item in raw:
        if isinstance(item, dict) and "content" in item:
            kept = [p for p in _parts_of(item["content"]) if _file_of(p) is None]
            item = {**item, "content": kept}
        stripped.append(item)
    return stripped


def _export_file(
    info: dict[str, Any], position: int, read: FileReader, notices: list[str]
) -> FilePart | None:
    path = info.get("path")
    name = info.get("orig_name") if isinstance(info.get("orig_name"), str) else None
    mime = info.get("mime_type") or (
        mimetypes.guess_type(path)[0] if isinstance(path, str) else None
    )
    where = f"the file in message {position}"
    if mime not in FILE_TYPES:
        notices.append(f"Left out {where}: only images are exported ({mime or 'unknown type'}).")
        return None
    data = read(path) if isinstance(path, str) else None
    if data is None:
        notices.append(f"Left out {where}: this server no longer has it.")
        return None
    try:
        return FilePart.of_bytes(data, str(mime), name[:MAX_FILE_NAME_CHARS] if name else None)
    except ValidationError:
        notices.append(f"Left out {where}: it is not the {mime} file it says it is.")
        return None


def export_messages(
    raw_history: object, read: FileReader, notices: list[str]
) -> list[ExportedMessage | ExportedNote]:
    """A Chatbot value (as the browser sends it) as export entries. The text and notes are
    checked by ui/turn/history.py `parse_history` (which raises HistoryRejected); files are
    read with `read`, and one that cannot be is left out with a notice."""
    if isinstance(raw_history, dict) and "root" in raw_history:  # a ChatbotDataMessages
        raw_history = raw_history["root"]
    messages = parse_history(_without_files(raw_history))
    raw_items = raw_history if isinstance(raw_history, list) else []
    entries: list[ExportedMessage | ExportedNote] = []
    for position, (message, raw) in enumerate(zip(messages, raw_items, strict=True), start=1):
        if is_note(message):
            metadata = message["metadata"]
            status = metadata.get("status")
            entries.append(
                ExportedNote(
                    type="note",
                    title=str(metadata["title"])[:MAX_NOTE_TITLE_CHARS],
                    text=message["content"],
                    status=status if status in ("pending", "done") else None,
                    reply=read_note_data(message),
                )
            )
            continue
        if message["role"] == "system":  # this app makes none; not part of the format
            continue
        parts: list[TextPart | FilePart] = []
        for part in _parts_of(raw.get("content")):
            info = _file_of(part)
            if info is not None:
                file_part = _export_file(info, position, read, notices)
                if file_part is not None:
                    parts.append(file_part)
            else:
                parts.append(TextPart(type="text", text=_text_of(part)))
        if not parts:
            parts = [TextPart(type="text", text="")]
        entries.append(ExportedMessage(type="message", role=message["role"], content=parts))
    return entries


def has_user_message(columns: Sequence[ExportedColumn]) -> bool:
    return any(
        isinstance(m, ExportedMessage) and m.role == "user" for c in columns for m in c.messages
    )


def export_file_name(kind: str, exported_at: datetime, suffix: str) -> str:
    """E.g. chat-2026-12-07-1304.json (UTC, so names sort by time)."""
    return f"{kind}-{exported_at.astimezone(UTC):%Y-%m-%d-%H%M}.{suffix}"


# === Markdown ============================================================================
def _quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


def _markdown_messages(column: ExportedColumn, heading: str) -> list[str]:
    lines: list[str] = []
    for entry in column.messages:
        if isinstance(entry, ExportedNote):
            lines += [_quoted(f"*{entry.title}*" + (f"\n{entry.text}" if entry.text else "")), ""]
            continue
        who = "You" if entry.role == "user" else display_name(column.model)
        lines += [f"{heading} {who}", ""]
        for part in entry.content:
            if isinstance(part, FilePart):
                lines.append(f"[image: {part.name}]" if part.name else "[image]")
            else:
                lines.append(part.text)
        lines.append("")
    return lines


def to_markdown(export: ConversationExport) -> str:
    """The conversation for reading: parameters, then each speaker's turn under a heading,
    the notes under replies quoted."""
    p = export.parameters
    names = ", ".join(f"{display_name(c.model)} (`{c.model}`)" for c in export.columns)
    title = "Chat with" if export.kind == "chat" else "Comparison of"
    lines = [
        f"# {title} {names}",
        "",
        f"Exported {export.exported_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- Temperature {p.temperature:g}, top-p {p.top_p:g}, max tokens {p.max_tokens}",
        f"- System prompt: {p.system_prompt}" if p.system_prompt else "- No system prompt",
        "",
    ]
    if export.kind == "chat":
        lines += _markdown_messages(export.columns[0], "##")
    else:
        for column in export.columns:
            lines += [f"## {display_name(column.model)} (`{column.model}`)", ""]
            lines += _markdown_messages(column, "###")
    return "\n".join(lines).rstrip() + "\n"


# === import ==============================================================================
class ImportRejected(InputRejected):
    """An imported file cannot be used; `user_message` says why."""


class ImportUpload(_Strict):
    """What the page's file picker sends (ui/view/file_scripts.py): the file's name and
    size, and its bytes as a data URL (None when the page found it too large to send)."""

    name: str = Field(max_length=MAX_FILE_NAME_CHARS)
    size: int = Field(ge=0)
    data_url: str | None = None


def _kb(size: int) -> str:
    return f"{size / 1024:,.0f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


def _where(location: Sequence[int | str]) -> str:
    """A pydantic error location in words: 'column 1, message 3, content part 2'."""
    words: list[str] = []
    names = {"columns": "column", "messages": "message", "content": "content part"}
    items = list(location)
    for index, item in enumerate(items):
        if isinstance(item, int):
            continue
        following = items[index + 1] if index + 1 < len(items) else None
        if item in names and isinstance(following, int):
            words.append(f"{names[item]} {following + 1}")
        elif item not in ("message", "note", "text", "file"):  # union tags
            words.append(f"“{item}”")
    return ", ".join(words) or "the file"


def _reason(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is missing"
    if kind == "extra_forbidden":
        return "is not part of this format"
    if kind == "value_error":
        return "is wrong: " + str(error["msg"]).removeprefix("Value error, ")
    if kind.startswith("string_too_long") or kind == "too_long":
        return "is too long"
    if kind == "too_short":
        return "is empty"
    if kind in ("union_tag_invalid", "literal_error", "union_tag_not_found"):
        return "has a value this format does not have"
    return "has the wrong type"


def parse_export(data: bytes) -> ConversationExport:
    """The export in `data`, or ImportRejected naming the first problem."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImportRejected("This file is not a conversation export: it is not text.") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportRejected(
            f"This file is not a conversation export: it is not JSON "
            f"(line {exc.lineno}, column {exc.colno})."
        ) from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise ImportRejected(
            "This JSON file is not a conversation export of this app (its “format” is not "
            f"“{EXPORT_FORMAT}”)."
        )
    version = document.get("version")
    if version != EXPORT_VERSION:
        raise ImportRejected(
            f"This export has format version {str(version)[:20]}; this app reads version "
            f"{EXPORT_VERSION}."
        )
    try:
        return ConversationExport.model_validate_json(text, strict=True)
    except ValidationError as exc:
        logger.info("Rejected an import: %s", exc.errors(include_input=False, include_url=False))
        first = exc.errors(include_input=False, include_url=False)[0]
        raise ImportRejected(
            f"This export cannot be imported: {_where(first['loc'])} {_reason(first)}."
        ) from None


def read_upload(upload: object, limit_bytes: int) -> tuple[str, ConversationExport]:
    """(file name, export) of what the file picker sent, or ImportRejected."""
    try:
        picked = ImportUpload.model_validate(upload, strict=True)
    except ValidationError:
        raise ImportRejected("The file could not be read: pick it again.") from None
    if picked.size > limit_bytes or picked.data_url is None:
        raise ImportRejected(
            f"“{picked.name}” is too large to import ({_kb(picked.size)}); the largest "
            f"export that can be imported is {_kb(limit_bytes)}."
        )
    try:
        data = base64.b64decode(picked.data_url.partition(";base64,")[2], validate=True)
    except binascii.Error:
        raise ImportRejected("The file could not be read: pick it again.") from None
    if len(data) > limit_bytes:
        raise ImportRejected(
            f"“{picked.name}” is too large to import ({_kb(len(data))}); the largest "
            f"export that can be imported is {_kb(limit_bytes)}."
        )
    return picked.name, parse_export(data)


def write_file(part: FilePart, files_dir: Path) -> Path:
    """Write an imported file part where Gradio serves it from (its cache: `files_dir`),
    named `<sha256>.<ext>` as ui/turn/images.py names what it sends: importing the same file
    again reuses it, and a PNG or JPEG reaches the model again when the chat goes on
    (ui/turn/history.py `image_digest`)."""
    data = part.data
    folder = files_dir / "imported"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()}{FILE_TYPES[part.mime_type]}"
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path


def to_chatbot(column: ExportedColumn, files_dir: Path) -> list[Message]:
    """A column's Chatbot value: text parts stay typed parts (Gradio would otherwise tidy a
    plain string's indentation: `inspect.cleandoc` in components/chatbot.py), file parts
    become files Gradio serves."""
    shown: list[Message] = []
    for entry in column.messages:
        if isinstance(entry, ExportedNote):
            metadata: dict[str, Any] = {"title": entry.title}
            if entry.status is not None:
                metadata["status"] = entry.status
            if entry.reply is not None:
                metadata["id"] = entry.reply.as_note_id()
            content = [{"type": "text", "text": entry.text}]
            shown.append({"role": "assistant", "content": content, "metadata": metadata})
            continue
        parts: list[dict[str, Any]] = []
        for part in entry.content:
            if isinstance(part, FilePart):
                path = write_file(part, files_dir)
                info = {"path": str(path), "mime_type": part.mime_type, "orig_name": part.name}
                parts.append({"type": "file", "file": info})
            else:
                parts.append({"type": "text", "text": part.text})
        shown.append({"role": entry.role, "content": parts})
    return shown


def conversation_text(column: ExportedColumn) -> list[Message]:
    """A column's messages as plain text display messages (files left out), for the checks
    a sent history meets (ui/turn/checks.py `check_history`)."""
    plain: list[Message] = []
    for entry in column.messages:
        if isinstance(entry, ExportedNote):
            plain.append(
                {"role": "assistant", "content": entry.text, "metadata": {"title": entry.title}}
            )
        else:
            plain.append({"role": entry.role, "content": entry.text})
    return plain
