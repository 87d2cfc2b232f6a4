"""Blind battle votes and the leaderboard, without a database.

A vote is one JSON line. `record_vote` writes it to the app log (on Cloud Run, stdout lines
are ingested by Cloud Logging, where `severity`, `message` and `timestamp` are understood)
and, when a vote log file is configured (LLM_VOTE_LOG), appends the same object to that
JSON-lines file, which `load_votes` reads back for the leaderboard.

Ratings: standard online Elo over the votes in file order (append order, i.e. time order),
K=32, every model starting at 1000. A "tie" scores 0.5 for each side. "both_bad" is also
scored as a draw (0.5 each), as Chatbot Arena does: neither model beat the other. It is
counted in `ties` and, separately, in `both_bad`. Win rate is wins / battles (draws count
as battles that were not won).

Public API::

    VALID_CHOICES
    pick_battle_pair(models, rng=None) -> (model_a, model_b)
    record_vote(model_a, model_b, choice, *, logger, vote_log_path=None, now=None) -> dict
    read_vote_log(path) -> VoteLogReport          (votes + count of malformed lines)
    load_votes(path) -> list[dict]                (logs a warning naming skipped lines)
    leaderboard(votes, *, models=(), k=32, base=1000) -> list[LeaderboardRow]
    format_leaderboard_markdown(rows, *, display_names=None) -> str
    JsonLogFormatter                              (one JSON object per log line)
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:  # POSIX advisory lock so several processes can append to one vote log
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_module_logger = logging.getLogger(__name__)

VALID_CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
VOTE_EVENT = "battle_vote"
ELO_K = 32.0
ELO_BASE = 1000.0
MAX_MODEL_NAME_CHARS = 200

_append_lock = threading.Lock()


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


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode("utf-8")
    with _append_lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            # One write of the whole line on an O_APPEND descriptor: lines never interleave.
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write to the vote log {path}: {written} of {len(data)}")
        finally:
            os.close(fd)  # also releases the flock


def record_vote(
    model_a: str,
    model_b: str,
    choice: str,
    *,
    logger: logging.Logger,
    vote_log_path: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
    battle_id: str | None = None,
) -> dict[str, Any]:
    """Record one blind-battle vote; returns the vote object that was written.

    Emits one INFO record through `logger` whose `json_fields` are the vote (with
    JsonLogFormatter that is one JSON line), then appends the vote as one JSON line to
    `vote_log_path` when given. Raises ValueError for an unknown choice or bad model names,
    OSError when the vote log cannot be written (the log line has been emitted by then).
    """
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
        "model_a": model_a,
        "model_b": model_b,
        "choice": choice,
        "winner": winner,
        "timestamp": _iso_utc(now),
    }
    if battle_id is not None:
        vote["battle_id"] = battle_id  # the leaderboard counts one vote per battle
    logger.info("%s", vote["message"], extra={"json_fields": vote})
    if vote_log_path is not None:
        _append_line(Path(vote_log_path), _json_line(vote))
    return vote


class OncePerBattle:
    """The battles voted on in this process, so a token cannot be voted with twice here;
    each is forgotten once its token has expired anyway. (Across instances the
    leaderboard still counts one vote per battle.)"""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._voted: dict[str, float] = {}  # battle id -> when its token was issued

    def claim(self, battle_id: str, issued_at: float, *, now: float | None = None) -> bool:
        """True the first time `battle_id` is claimed, False after that."""
        now = time.time() if now is None else now
        if len(self._voted) > 1000:  # forget expired battles now and then
            self._voted = {b: t for b, t in self._voted.items() if t + self.ttl_s > now}
        if battle_id in self._voted:
            return False
        self._voted[battle_id] = issued_at
        return True


# === reading votes =======================================================================
@dataclass(frozen=True)
class VoteLogReport:
    votes: list[dict[str, Any]]
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)  # 1-based, first 20 only


def _as_vote(data: object) -> dict[str, Any] | None:
    """The vote if `data` is a well-formed battle vote, else None."""
    if not isinstance(data, dict):
        return None
    try:
        _check_pair(data.get("model_a"), data.get("model_b"))
        _check_choice(data.get("choice"))
    except ValueError:
        return None
    return data


def read_vote_log(path: str | os.PathLike[str]) -> VoteLogReport:
    """Votes in a JSON-lines file, in file order. A missing file means no votes yet.

    Blank lines and JSON objects of other events are ignored; lines that are not JSON, or
    votes with missing/invalid fields, are skipped and counted as malformed.
    """
    votes: list[dict[str, Any]] = []
    malformed: list[int] = []
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except FileNotFoundError:
        return VoteLogReport(votes=[])
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                malformed.append(number)
                continue
            if isinstance(data, dict) and data.get("event", VOTE_EVENT) != VOTE_EVENT:
                continue
            vote = _as_vote(data)
            if vote is None:
                malformed.append(number)
            else:
                votes.append(vote)
    return VoteLogReport(votes=votes, malformed=len(malformed), malformed_lines=malformed[:20])


def load_votes(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The votes in `path`, skipping malformed lines (counted in a warning)."""
    report = read_vote_log(path)
    if report.malformed:
        _module_logger.warning(
            "Skipped %d malformed line(s) in the vote log %s (line numbers: %s)",
            report.malformed,
            path,
            ", ".join(map(str, report.malformed_lines)),
        )
    return report.votes


# === leaderboard =========================================================================
@dataclass
class LeaderboardRow:
    model: str
    elo: float = ELO_BASE
    battles: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0  # includes both_bad
    both_bad: int = 0

    @property
    def win_rate(self) -> float:
        return self.wins / self.battles if self.battles else 0.0


def expected_score(rating: float, opponent: float) -> float:
    """Elo's expected score of a player rated `rating` against `opponent`."""
    return 1.0 / (1.0 + 10.0 ** ((opponent - rating) / 400.0))


def leaderboard(
    votes: Iterable[Mapping[str, Any]],
    *,
    models: Iterable[str] = (),
    k: float = ELO_K,
    base: float = ELO_BASE,
) -> list[LeaderboardRow]:
    """Per-model battles, wins, losses, ties and online Elo, best Elo first.

    `models` adds rows (at the base rating) for models without votes yet. Votes are applied
    in the order given; a malformed vote raises ValueError naming its position. A battle
    voted on more than once (the same `battle_id`: a replayed token, e.g. at another
    instance) counts once, with its first vote.
    """
    rows: dict[str, LeaderboardRow] = {name: LeaderboardRow(name, elo=base) for name in models}
    counted: set[str] = set()

    def row(name: str) -> LeaderboardRow:
        if name not in rows:
            rows[name] = LeaderboardRow(name, elo=base)
        return rows[name]

    for position, vote in enumerate(votes):
        model_a, model_b, choice = vote.get("model_a"), vote.get("model_b"), vote.get("choice")
        try:
            _check_pair(model_a, model_b)
            _check_choice(choice)
        except ValueError as error:
            raise ValueError(f"vote #{position} is malformed: {error}") from None
        battle_id = vote.get("battle_id")
        if isinstance(battle_id, str):
            if battle_id in counted:
                continue
            counted.add(battle_id)
        a, b = row(str(model_a)), row(str(model_b))
        score_a = {"a": 1.0, "b": 0.0}.get(str(choice), 0.5)  # tie and both_bad: draw
        expected_a = expected_score(a.elo, b.elo)
        a.elo, b.elo = (
            a.elo + k * (score_a - expected_a),
            b.elo + k * ((1.0 - score_a) - (1.0 - expected_a)),
        )
        a.battles += 1
        b.battles += 1
        if choice == "a":
            a.wins += 1
            b.losses += 1
        elif choice == "b":
            b.wins += 1
            a.losses += 1
        else:
            a.ties += 1
            b.ties += 1
            if choice == "both_bad":
                a.both_bad += 1
                b.both_bad += 1
    return sorted(rows.values(), key=lambda r: (-r.elo, -r.wins, r.model))


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\|*_`[]<>#"})


def format_leaderboard_markdown(
    rows: Sequence[LeaderboardRow], *, display_names: Mapping[str, str] | None = None
) -> str:
    """A Markdown table of the leaderboard (or a short note when there are no votes)."""
    if not any(r.battles for r in rows):
        return "_No votes yet: run a few blind battles to fill the leaderboard._"
    names = display_names or {}
    lines = [
        "| # | Model | Elo | Battles | Wins | Losses | Ties | Win rate |",
        "|--:|:------|----:|--------:|-----:|-------:|-----:|---------:|",
    ]
    for rank, r in enumerate(rows, start=1):
        label = names.get(r.model, r.model).translate(_MARKDOWN_SPECIAL)
        lines.append(
            f"| {rank} | {label} | {r.elo:.0f} | {r.battles} | {r.wins} | {r.losses} | "
            f"{r.ties} | {r.win_rate:.0%} |"
        )
    return "\n".join(lines)
