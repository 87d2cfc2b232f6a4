"""Blind battle votes: checked, saved in the vote store, logged, and shown as ratings.

A vote goes to the store that `LLM_VOTES` names (ui/votes/store.py: SQLite locally,
Firestore on Cloud Run), which refuses a second vote for the same battle from any UI
instance. Once saved, it is also written as one JSON line to the app log (on Cloud Run,
stdout lines are ingested by Cloud Logging, where `severity`, `message` and `timestamp` are
understood). The leaderboard reads the store's per-pair counts and fits Bradley-Terry
ratings with bootstrap intervals (ui/votes/ratings.py).

Public API::

    VALID_CHOICES
    pick_battle_pair(models, rng=None) -> (model_a, model_b)
    VoteBook(setting, logger)                      .record(...) / .ratings(models)
    format_leaderboard_markdown(ratings, *, display_names=None) -> str
    JsonLogFormatter                               (one JSON object per log line)
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ui.votes.ratings import Rating, rate, shared_ranks
from ui.votes.store import CHOICES, Vote, VoteStore, VoteStoreError, open_vote_store

_module_logger = logging.getLogger(__name__)

VALID_CHOICES: tuple[str, ...] = CHOICES
VOTE_EVENT = "battle_vote"
MAX_MODEL_NAME_CHARS = 200


# === time and JSON helpers ===============================================================
def _iso_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, the form Cloud Logging reads from a `timestamp` field."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_line(payload: Mapping[str, Any]) -> str:
    # json.dumps escapes newlines inside strings, so the result is always a single line.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


_SEVERITIES = ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (10, "DEBUG"))


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON line for Cloud Logging.

    Fields: severity, message, timestamp, logger, plus any mapping passed as
    `extra={"json_fields": {...}}` (those win on a name clash). Tracebacks and exception
    messages are left out on purpose, since they can quote tokens or keys; only the
    exception's type name is kept.
    """

    def format(self, record: logging.LogRecord) -> str:
        severity = next((name for level, name in _SEVERITIES if record.levelno >= level), "DEFAULT")
        payload: dict[str, Any] = {
            "severity": severity,
            "message": record.getMessage(),
            "timestamp": _iso_utc(datetime.fromtimestamp(record.created, UTC)),
            "logger": record.name,
        }
        if record.exc_info and record.exc_info[0] is not None:
            payload["exception_type"] = record.exc_info[0].__name__
        fields = getattr(record, "json_fields", None)
        if isinstance(fields, Mapping):
            payload.update(fields)
        return _json_line(payload)


VOTE_LOGGER_NAME = "ui.battle.votes"


class _StdoutJsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """JSON lines on the current sys.stdout (looked up per record, so a replaced stdout,
    e.g. under a test runner, is followed)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(JsonLogFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def vote_logger() -> logging.Logger:
    """The logger votes go to: one JSON object per line on stdout (Cloud Logging reads
    `severity`, `message` and `timestamp` from it). Set up once per process."""
    log = logging.getLogger(VOTE_LOGGER_NAME)
    if not any(isinstance(h, _StdoutJsonHandler) for h in log.handlers):
        log.addHandler(_StdoutJsonHandler())
        log.setLevel(logging.INFO)
        log.propagate = False  # not a second, plain-text copy through the root logger
    return log


# === battles =============================================================================
def pick_battle_pair(models: Sequence[str], rng: random.Random | None = None) -> tuple[str, str]:
    """Two different models in random order (which one is "A" is random too)."""
    distinct = list(dict.fromkeys(models))
    if len(distinct) < 2:
        raise ValueError(
            f"A battle needs at least two different models; {len(distinct)} available: {distinct}"
        )
    first, second = (rng or random.Random()).sample(distinct, 2)
    return first, second


# A reply that says who wrote it ("I am Gemma, made by Google") unblinds the battle: like
# Chatbot Arena, such battles get no vote (its leaderboard drops battles whose replies
# reveal a model's identity). Words for the usual model families and makers, plus the
# battle's own model names (from their tags and display names).
IDENTITY_WORDS = (
    "gpt", "chatgpt", "openai", "claude", "anthropic", "gemini", "gemma", "bard", "google",
    "deepmind", "llama", "meta ai", "mistral", "mixtral", "qwen", "alibaba", "deepseek",
    "phi", "microsoft", "smollm", "hugging face", "huggingface", "tinyllama", "granite",
    "ibm", "olmo", "falcon", "vicuna",
)  # fmt: skip
NAMES_A_MODEL_MESSAGE = (
    "A reply names a model, so this battle is no longer blind and cannot be voted on. "
    "Press “New battle” to start another one."
)


def _name_words(model: str, display_name: str) -> set[str]:
    base = model.split(":", 1)[0].rsplit("/", 1)[-1].lower()
    words = {base, base.rstrip("0123456789.-_")}
    first = display_name.split(" ", 1)[0].lower()
    words |= {first, first.rstrip("0123456789.-_")}
    return {w for w in words if len(w) >= 3}


def names_a_model(texts: Iterable[str], models: Mapping[str, str]) -> bool:
    """Whether any of `texts` names a model: a well-known family or maker, or one of
    `models` ({tag: display name}). A word counts when no letter follows it, so "gemma3"
    and "Llama-3" count, "philosophy" does not."""
    words = set(IDENTITY_WORDS)
    for tag, display in models.items():
        words |= _name_words(tag, display)
    pattern = re.compile(
        r"\b(?:"
        + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        + r")(?![a-z])"
    )
    return any(pattern.search(text.lower()) for text in texts)


def _check_pair(model_a: object, model_b: object) -> None:
    for side, name in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{side} must be a non-empty model name, got {name!r}")
        if len(name) > MAX_MODEL_NAME_CHARS:
            raise ValueError(f"{side} is longer than {MAX_MODEL_NAME_CHARS} characters")
    if model_a == model_b:
        raise ValueError(f"a battle needs two different models, got {model_a!r} twice")


def _check_choice(choice: object) -> str:
    if choice not in VALID_CHOICES:
        raise ValueError(f"invalid vote {choice!r}; valid choices are {', '.join(VALID_CHOICES)}")
    return str(choice)


def _winner(model_a: str, model_b: str, choice: str) -> str | None:
    return {"a": model_a, "b": model_b}.get(choice)


class VoteNotSaved(Exception):
    """The vote store could not be reached or refused the write: nothing was counted, and
    the same vote may be sent again. `user_message` is safe to show."""

    user_message = "Your vote could not be saved just now. Please press the button again."


class VoteBook:
    """The battle votes of this UI process: one store (opened on first use, so a process
    that never sees a vote never touches it) and the JSON vote log line."""

    def __init__(self, setting: str, logger: logging.Logger) -> None:
        self.setting = setting
        self.logger = logger
        self._store: VoteStore | None = None
        self._opening = threading.Lock()

    @property
    def store(self) -> VoteStore:
        with self._opening:
            if self._store is None:
                self._store = open_vote_store(self.setting)
            return self._store

    def record(
        self,
        model_a: str,
        model_b: str,
        choice: str,
        *,
        battle_id: str,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Save one vote and log it; returns the logged vote object. Raises ValueError for
        an unknown choice or bad model names, AlreadyVoted when the battle has a vote,
        VoteNotSaved when the store failed (details in the log, not in the message)."""
        _check_pair(model_a, model_b)
        choice = _check_choice(choice)
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            raise ValueError("now must be timezone-aware (for example datetime.now(UTC))")
        winner = _winner(model_a, model_b, choice)
        outcome = f"winner {winner}" if winner else choice.replace("_", " ")
        vote: dict[str, Any] = {
            "severity": "INFO",
            "message": f"battle vote: {model_a} vs {model_b}: {outcome}",
            "event": VOTE_EVENT,
            "battle_id": battle_id,
            "model_a": model_a,
            "model_b": model_b,
            "choice": choice,
            "winner": winner,
            "timestamp": _iso_utc(now),
        }
        try:
            self.store.record(
                Vote(battle_id, model_a, model_b, choice, timestamp=vote["timestamp"])
            )
        except (VoteStoreError, OSError, ImportError) as exc:
            _module_logger.error("vote for battle %s not saved: %s", battle_id, exc)
            self._forget_store()
            raise VoteNotSaved() from exc
        self.logger.info("%s", vote["message"], extra={"json_fields": vote})
        return vote

    def ratings(self, models: Iterable[str] = ()) -> list[Rating]:
        """Bradley-Terry ratings from the store's counts. Raises VoteStoreError when the
        store cannot be read."""
        try:
            counts = self.store.pair_counts()
        except VoteStoreError:
            self._forget_store()
            raise
        return rate(counts, models=models)

    def _forget_store(self) -> None:
        """Open the store afresh next time: after an outage, gRPC's channel to Firestore
        keeps failing fast for up to its reconnect backoff (minutes), while a new client
        connects at once."""
        with self._opening:
            self._store = None


# === leaderboard =========================================================================
# Model names come from the store: nothing in them may format the table (pipes, newlines,
# HTML, emphasis; with brackets escaped no link or image can form, so "(base)" stays plain).
_MARKDOWN_SPECIAL = str.maketrans(
    {**{c: "\\" + c for c in "\\|*_`[]<>#!~"}, "\n": " ", "\r": " ", "\t": " "}
)


def markdown_text(text: str) -> str:
    """`text` as literal Markdown table-cell text."""
    return text.translate(_MARKDOWN_SPECIAL)


def format_leaderboard_markdown(
    ratings: Sequence[Rating], *, display_names: Mapping[str, str] | None = None
) -> str:
    """A Markdown table of the ratings (or a short note when there are no votes), with a
    note naming the models whose intervals overlap."""
    if not any(r.votes for r in ratings):
        return "_No votes yet: run a few blind battles to fill the leaderboard._"
    names = display_names or {}
    lines = [
        "| Rank | Model | Rating | 95% interval | Votes | Wins | Losses | Ties |",
        "|-----:|:------|-------:|:------------:|------:|-----:|-------:|-----:|",
    ]
    for r in ratings:
        label = markdown_text(names.get(r.model, r.model))
        interval = f"{r.lower:.0f} – {r.upper:.0f}" if r.votes else "–"
        lines.append(
            f"| {r.rank} | {label} | {r.rating:.0f} | {interval} | {r.votes} | {r.wins} | "
            f"{r.losses} | {r.ties} |"
        )
    shared = shared_ranks(ratings)
    if shared:
        groups = "; ".join(
            ", ".join(markdown_text(names.get(m, m)) for m in group) for group in shared
        )
        lines += [
            "",
            f"Not separated by the votes so far (their intervals overlap, so they share a "
            f"rank): {groups}.",
        ]
    return "\n".join(lines)
