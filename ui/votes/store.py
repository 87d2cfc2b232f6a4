"""Where battle votes live: one small interface, two stores, chosen by `LLM_VOTES`.

    sqlite:///PATH   stdlib sqlite3 in WAL mode (the local default; several processes may
                     share the file)
    firestore        Google Cloud Firestore in Native mode (the Cloud Run deploy): project
                     from GOOGLE_CLOUD_PROJECT or the metadata server, FIRESTORE_EMULATOR_HOST
                     honoured by the library itself

Both keep two things, written together in one atomic step:
- the vote, keyed by its battle id: a second vote on the same battle is refused by the
  store (a create that fails if the key exists), whichever UI instance it reaches;
- per-pair outcome counts, so the leaderboard reads O(models²) aggregates, never the votes.

A pair is stored once, its two models in sorted order (`first` < `second`), with how often
each won, tied, or both were bad.

Errors::

    VoteStoreError            the store could not be reached or refused the write
    AlreadyVoted              this battle already has a vote (an InputRejected: the user's)
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random

from ui.errors import InputRejected

log = logging.getLogger(__name__)

CHOICES: Final = ("a", "b", "tie", "both_bad")
STORE_TIMEOUT_S: Final = 5.0  # one vote or one leaderboard read; then the user is told
VOTES_COLLECTION: Final = "battle_votes"
PAIRS_COLLECTION: Final = "battle_pairs"


class VoteStoreError(Exception):
    """The store could not be reached or refused the write; nothing was saved."""


class AlreadyVoted(InputRejected):
    default_message = (
        "This battle has been voted on already. Send a new prompt for the next battle."
    )


@dataclass(frozen=True)
class Vote:
    battle_id: str
    model_a: str
    model_b: str
    choice: str  # one of CHOICES
    timestamp: str  # RFC 3339, UTC

    def __post_init__(self) -> None:
        # The battle id is the vote's key: one type only, so 123 and "123" can never be
        # two keys of one battle (SQLite would coerce; Firestore's document id would not).
        if not isinstance(self.battle_id, str) or not 0 < len(self.battle_id) <= 128:
            raise ValueError("a vote's battle id must be a string of 1 to 128 characters")


@dataclass(frozen=True)
class PairCounts:
    """Outcomes of all battles between `first` and `second` (first < second)."""

    first: str
    second: str
    first_wins: int = 0
    second_wins: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def battles(self) -> int:
        return self.first_wins + self.second_wins + self.ties + self.both_bad


def pair_outcome(vote: Vote) -> tuple[str, str, str]:
    """(first, second, counter) for `vote`: the pair in sorted order, and which of its
    counters the vote adds one to."""
    first, second = sorted((vote.model_a, vote.model_b))
    if vote.choice in ("tie", "both_bad"):
        return first, second, "ties" if vote.choice == "tie" else "both_bad"
    winner = vote.model_a if vote.choice == "a" else vote.model_b
    return first, second, "first_wins" if winner == first else "second_wins"


class VoteStore(Protocol):
    def record(self, vote: Vote) -> None:
        """Save `vote` and count it, atomically. Raises AlreadyVoted or VoteStoreError."""

    def pair_counts(self) -> list[PairCounts]:
        """Every pair's counts. Raises VoteStoreError."""

    def vote_count(self) -> int:
        """How many votes are stored (checks and tests; not used by the leaderboard)."""


# === SQLite ==============================================================================
_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    battle_id TEXT PRIMARY KEY,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    choice TEXT NOT NULL,
    timestamp TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pair_counts (
    first TEXT NOT NULL,
    second TEXT NOT NULL,
    first_wins INTEGER NOT NULL DEFAULT 0,
    second_wins INTEGER NOT NULL DEFAULT 0,
    ties INTEGER NOT NULL DEFAULT 0,
    both_bad INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (first, second)
);
"""


class SqliteVoteStore:
    """Votes in one SQLite file. WAL lets readers and one writer work at once, across
    processes; `busy_timeout` makes a writer wait for another instead of failing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()  # one connection per thread (sqlite3's rule)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Processes opening a new file at once each switch it to WAL and create the
            # tables; two that both hold a read lock and want to write get "database is
            # locked" at once (SQLite's deadlock rule skips the busy timeout): try again.
            for attempt in Retrying(
                retry=retry_if_exception(_is_locked),
                stop=stop_after_delay(STORE_TIMEOUT_S),
                wait=wait_random(0.01, 0.2),
                reraise=True,
            ):
                with attempt:
                    self._forget_connection()
                    self._connection().executescript(_SCHEMA)  # idempotent; commits itself
        except (OSError, sqlite3.Error) as exc:
            raise VoteStoreError(f"SQLite vote store {self.path}: {exc}") from exc

    def _forget_connection(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=STORE_TIMEOUT_S, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise VoteStoreError(f"SQLite vote store {self.path}: {exc}") from exc

    def record(self, vote: Vote) -> None:
        first, second, counter = pair_outcome(vote)
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO votes (battle_id, model_a, model_b, choice, timestamp) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (vote.battle_id, vote.model_a, vote.model_b, vote.choice, vote.timestamp),
                )
                # `counter` is one of four fixed column names (pair_outcome), never input.
                db.execute(
                    f"INSERT INTO pair_counts (first, second, {counter}) VALUES (?, ?, 1) "
                    f"ON CONFLICT (first, second) DO UPDATE SET {counter} = {counter} + 1",
                    (first, second),
                )
        except sqlite3.IntegrityError:
            raise AlreadyVoted() from None

    def pair_counts(self) -> list[PairCounts]:
        try:
            rows = (
                self._connection()
                .execute(
                    "SELECT first, second, first_wins, second_wins, ties, both_bad "
                    "FROM pair_counts ORDER BY first, second"
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise VoteStoreError(f"SQLite vote store {self.path}: {exc}") from exc
        return [PairCounts(*row) for row in rows]

    def vote_count(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM votes").fetchone()[0])


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


# === Firestore ===========================================================================
def _pair_document_id(first: str, second: str) -> str:
    # Model tags may hold "/" (hf.co/...), which Firestore reads as a path: hash the pair.
    return hashlib.sha256(f"{first}\x00{second}".encode()).hexdigest()


def _vote_document_id(battle_id: str) -> str:
    # Battle ids are ours (ui/votes/battle_token.py), but a key must never be able to name a path.
    return "b-" + hashlib.sha256(battle_id.encode()).hexdigest()


class FirestoreVoteStore:
    """Votes in Firestore (Native mode). One batched write per vote: `create` of the vote
    document (fails if the battle already has one) and field increments on the pair's
    document; a batch is atomic, so the counts always match the votes."""

    def __init__(self, project: str | None = None) -> None:
        from google.cloud import firestore  # imported here: SQLite users need no gRPC

        self._firestore = firestore
        self.client = firestore.Client(project=project)

    def record(self, vote: Vote) -> None:
        from google.api_core import exceptions as gexc

        first, second, counter = pair_outcome(vote)
        batch = self.client.batch()
        batch.create(
            self.client.collection(VOTES_COLLECTION).document(_vote_document_id(vote.battle_id)),
            {
                "battle_id": vote.battle_id,
                "model_a": vote.model_a,
                "model_b": vote.model_b,
                "choice": vote.choice,
                "timestamp": vote.timestamp,
            },
        )
        batch.set(
            self.client.collection(PAIRS_COLLECTION).document(_pair_document_id(first, second)),
            {"first": first, "second": second, counter: self._firestore.Increment(1)},
            merge=True,
        )
        try:
            batch.commit(timeout=STORE_TIMEOUT_S, retry=_retry())
        except gexc.AlreadyExists:
            raise AlreadyVoted() from None
        except gexc.GoogleAPIError as exc:
            raise VoteStoreError(f"Firestore: {type(exc).__name__}: {exc}") from exc

    def pair_counts(self) -> list[PairCounts]:
        from google.api_core import exceptions as gexc

        try:
            documents = list(
                self.client.collection(PAIRS_COLLECTION).stream(
                    timeout=STORE_TIMEOUT_S, retry=_retry()
                )
            )
        except gexc.GoogleAPIError as exc:
            raise VoteStoreError(f"Firestore: {type(exc).__name__}: {exc}") from exc
        counts = []
        for document in documents:
            data: dict[str, Any] = document.to_dict() or {}
            counts.append(
                PairCounts(
                    first=str(data.get("first", "")),
                    second=str(data.get("second", "")),
                    first_wins=int(data.get("first_wins", 0)),
                    second_wins=int(data.get("second_wins", 0)),
                    ties=int(data.get("ties", 0)),
                    both_bad=int(data.get("both_bad", 0)),
                )
            )
        return sorted(
            (c for c in counts if c.first and c.second), key=lambda c: (c.first, c.second)
        )

    def vote_count(self) -> int:
        result = self.client.collection(VOTES_COLLECTION).count().get(timeout=STORE_TIMEOUT_S)
        return int(result[0][0].value)


def _retry() -> Any:
    """Retry transient gRPC failures (UNAVAILABLE, ...) briefly, within the store timeout:
    a vote button must answer in seconds, not after the library's default minute."""
    from google.api_core.retry import Retry, if_transient_error

    return Retry(predicate=if_transient_error, initial=0.1, maximum=1.0, timeout=STORE_TIMEOUT_S)


# === choosing ============================================================================
def open_vote_store(setting: str) -> VoteStore:
    """The store that `LLM_VOTES` names (`sqlite:///PATH` or `firestore`)."""
    if setting == "firestore":
        return FirestoreVoteStore(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or None)
    if setting.startswith("sqlite:///"):
        return SqliteVoteStore(setting.removeprefix("sqlite:///"))
    raise ValueError(f"LLM_VOTES must be sqlite:///PATH or firestore, not {setting!r}")
