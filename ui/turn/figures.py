"""What was measured of one reply: one type, from the stream's end to the share link.

`ReplyFigures` is made once, when a reply's stream ends (ui/turn/reply.py), from the UI's
own clock (time to first token, total) and Ollama's final line (ui/backend_access/client.py
`ReplyStats`: tokens, speed, load). The same object is drawn under the reply
(ui/view/), carried as data in the note under it, bound by the reply's MAC
(ui/share/reply_mac.py) and stored in share links (ui/share/format.py). Nothing reads
figures back from the text that shows them.

Where the figures travel in the browser: Gradio's Chatbot keeps only the keys of its
`MetadataDict` in a message's metadata (title, id, parent_id, log, duration, status; gradio
6.31 `components/chatbot.py`: its `Message` model drops any other key, checked by
validating one), and `id` is the one it shows nowhere. So the note
under a reply carries its `NoteData` (figures, the model that wrote it, the reply's MAC)
as compact JSON in `metadata["id"]`; the browser sends it back with the history, and
`read_note_data` validates it like any other input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ui.backend_access.client import ReplyStats, was_a_model_load
from ui.backend_access.status import GpuPrice
from ui.turn.history import MAX_NOTE_ID_CHARS  # the JSON below: figures (~150), model, MAC

MAX_MODEL_CHARS: Final = 200  # a model tag, as the share format allows it
# The figures a reply's MAC binds and a share link carries: what a reader of the shared view
# takes as measured by this server. The prompt size and why it stopped stay in the browser.
BOUND_FIELDS: Final = ("ttft_s", "tokens_per_s", "total_s", "load_s", "eval_count")


def _rounded(value: float | None, digits: int) -> float | None:
    # Figures are for display; rounding keeps share links short (ms precision is plenty).
    return None if value is None else round(value, digits)


class ReplyFigures(BaseModel):
    """Timing and size of one reply as the UI measured it. All optional (a shared reply may
    carry none; a stopped one has no Ollama figures)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ttft_s: float | None = Field(default=None, ge=0)  # send to first token, the UI's clock
    tokens_per_s: float | None = Field(default=None, ge=0)  # Ollama's eval_count / eval_duration
    eval_count: int | None = Field(default=None, ge=0)
    total_s: float | None = Field(default=None, ge=0)  # send to last token, the UI's clock
    load_s: float | None = Field(default=None, ge=0)  # Ollama's load_duration
    prompt_tokens: int | None = Field(default=None, ge=0)
    done_reason: str | None = Field(default=None, max_length=40)

    @field_validator("ttft_s", "total_s", "load_s")
    @classmethod
    def _round_seconds(cls, value: float | None) -> float | None:
        return _rounded(value, 3)

    @field_validator("tokens_per_s")
    @classmethod
    def _round_rate(cls, value: float | None) -> float | None:
        return _rounded(value, 2)

    @classmethod
    def of_reply(
        cls, stats: ReplyStats | None, *, ttft_s: float | None, total_s: float | None
    ) -> ReplyFigures:
        """A finished reply's figures: the UI's timings and, unless the reply was stopped
        (`stats` None), Ollama's."""
        if stats is None:
            return cls(ttft_s=ttft_s, total_s=total_s)
        return cls(
            ttft_s=ttft_s,
            total_s=total_s,
            tokens_per_s=stats.tokens_per_second,
            eval_count=stats.eval_count,
            prompt_tokens=stats.prompt_eval_count,
            load_s=stats.load_seconds,
            done_reason=stats.done_reason,
        )

    @property
    def model_loaded(self) -> bool:
        """Whether the reply waited for its model to load (ui/backend_access/client.py)."""
        return was_a_model_load(self.load_s)

    def bound(self) -> ReplyFigures:
        """The figures a MAC binds and a share carries (BOUND_FIELDS; a load time only when
        it was a load: it is shown only then)."""
        values: dict[str, Any] = {name: getattr(self, name) for name in BOUND_FIELDS}
        if not self.model_loaded:
            values["load_s"] = None
        return ReplyFigures(**values)


@dataclass(frozen=True)
class ReplyCost:
    """The GPU time a reply used and the price it is estimated at (ui/backend_access/status.py)."""

    seconds: float
    price: GpuPrice


class NoteData(BaseModel):
    """What the note under a finished reply carries as data (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    figures: ReplyFigures
    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)  # the model that wrote it
    # The server's MAC over the reply (ui/share/reply_mac.py checks its shape and value).
    mac: str | None = Field(default=None, max_length=64)

    def as_note_id(self) -> str:
        return self.model_dump_json(exclude_none=True)


def read_note_data(message: dict[str, Any]) -> NoteData | None:
    """A note's data, or None when the message carries none (or something else)."""
    metadata = message.get("metadata")
    value = metadata.get("id") if isinstance(metadata, dict) else None
    if not isinstance(value, str) or len(value) > MAX_NOTE_ID_CHARS:
        return None
    try:
        return NoteData.model_validate_json(value)
    except ValidationError:
        return None
