"""What a backend call gives back, whichever API the backend speaks: the chat stream's events
(`TokenDelta`, then one `ReplyDone` with the reply's `ReplyStats`).

ui/backend_access/client.py (Ollama) and ui/backend_access/openai_api.py (OpenAI-compatible
servers) both make these; the turn pipeline reads them without knowing which API answered.
"""

from __future__ import annotations

from dataclasses import dataclass

import ollama

NS_PER_S = 1_000_000_000
# A load_duration above this means the request waited for a model to load. Ollama measures it
# from request start to the model being ready (server/routes.go ChatHandler, v0.24.0): only
# scheduling when the model is loaded, the whole load (seconds on a GPU) otherwise. Measured
# with the real engine (`python -m bench.load_duration`, 2026-12-07, 2 cores): a loaded model
# 0.10-0.49 ms quiet, at most 4.3 ms with another process keeping a core busy; a real load
# 117-392 ms for smollm2:135m (91 ms seen once on a quiet machine), 413-1687 ms for
# gemma3:270m. 20 ms sits 4x above the slowest warm value and 4x below the fastest load.
MODEL_LOAD_MIN_S = 0.020


def was_a_model_load(load_seconds: float | None) -> bool:
    """Whether a reply with this load_duration (in seconds) waited for its model to load."""
    return load_seconds is not None and load_seconds > MODEL_LOAD_MIN_S


@dataclass(frozen=True)
class TokenDelta:
    """A piece of reply text, in stream order."""

    text: str


@dataclass(frozen=True)
class ReplyStats:
    """The backend's numbers from the end of a reply: Ollama's final stream line (durations in
    nanoseconds), or an OpenAI-compatible server's `usage` (token counts, no timings), its
    `finish_reason` and the rate the UI measured from the stream (`measured_rate`)."""

    eval_count: int | None = None
    eval_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    total_duration: int | None = None
    done_reason: str | None = None
    # Tokens/s the UI measured (ui/backend_access/openai_api.py) where the backend sends no
    # timings; Ollama's eval_count / eval_duration wins when there is one.
    measured_rate: float | None = None

    @property
    def tokens_per_second(self) -> float | None:
        if not self.eval_count or not self.eval_duration:
            return self.measured_rate
        return self.eval_count / (self.eval_duration / NS_PER_S)

    @property
    def load_seconds(self) -> float | None:
        return None if self.load_duration is None else self.load_duration / NS_PER_S

    @property
    def model_was_loaded(self) -> bool:
        """Whether this reply waited for its model to load (see MODEL_LOAD_MIN_S)."""
        return was_a_model_load(self.load_seconds)

    @property
    def total_seconds(self) -> float | None:
        return None if self.total_duration is None else self.total_duration / NS_PER_S

    @classmethod
    def from_response(cls, part: ollama.ChatResponse) -> ReplyStats:
        return cls(
            eval_count=part.eval_count,
            eval_duration=part.eval_duration,
            load_duration=part.load_duration,
            prompt_eval_count=part.prompt_eval_count,
            prompt_eval_duration=part.prompt_eval_duration,
            total_duration=part.total_duration,
            done_reason=part.done_reason,
        )


@dataclass(frozen=True)
class ReplyDone:
    """The last event of a reply."""

    stats: ReplyStats


ChatEvent = TokenDelta | ReplyDone
