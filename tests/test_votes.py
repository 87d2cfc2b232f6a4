"""Blind battle votes: recording (VoteBook over a real SQLite store), the JSON log line,
and the leaderboard table (ui/votes/book.py)."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ui.votes.book import (
    VALID_CHOICES,
    JsonLogFormatter,
    VoteBook,
    VoteNotSaved,
    format_leaderboard_markdown,
    pick_battle_pair,
)
from ui.votes.ratings import rate
from ui.votes.store import AlreadyVoted, PairCounts

NOW = datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A real logger whose handler writes JsonLogFormatter lines into a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger(f"test.votes.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def book(tmp_path: Path, json_log: tuple[logging.Logger, io.StringIO]) -> VoteBook:
    return VoteBook(f"sqlite:///{tmp_path / 'votes.sqlite3'}", json_log[0])


def lines_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- battle pairs --------------------------------------------------------------------------
def test_pick_battle_pair_gives_two_different_models_in_both_orders() -> None:
    models = ["gemma3:4b", "llama3.2:3b", "mistral:7b"]
    rng = random.Random(1234)
    pairs = [pick_battle_pair(models, rng) for _ in range(300)]
    assert all(a != b and a in models and b in models for a, b in pairs)
    assert len(set(pairs)) == 6  # every ordered pair shows up: position A is random too


def test_pick_battle_pair_is_reproducible_with_a_seeded_rng() -> None:
    models = ["a", "b", "c", "d"]
    assert pick_battle_pair(models, random.Random(5)) == pick_battle_pair(models, random.Random(5))


@pytest.mark.parametrize("models", [[], ["gemma3:4b"], ["gemma3:4b", "gemma3:4b"]])
def test_pick_battle_pair_needs_two_different_models(models: list[str]) -> None:
    with pytest.raises(ValueError, match="at least two different models"):
        pick_battle_pair(models)


# --- recording -----------------------------------------------------------------------------
def test_a_saved_vote_emits_one_json_log_line(
    book: VoteBook, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    _, stream = json_log
    vote = book.record("gemma3:4b", "llama3.2:3b", "a", battle_id="b1", now=NOW)

    [line] = lines_of(stream)
    assert line["severity"] == "INFO"
    assert line["event"] == "battle_vote"
    assert line["battle_id"] == "b1"
    assert line["model_a"] == "gemma3:4b"
    assert line["model_b"] == "llama3.2:3b"
    assert line["choice"] == "a"
    assert line["winner"] == "gemma3:4b"
    assert "gemma3:4b" in line["message"] and "llama3.2:3b" in line["message"]
    assert datetime.fromisoformat(line["timestamp"]) == NOW
    assert {k: line[k] for k in vote} == vote
    assert book.store.pair_counts() == [PairCounts("gemma3:4b", "llama3.2:3b", first_wins=1)]


@pytest.mark.parametrize(
    ("choice", "winner", "counter"),
    [
        ("a", "mistral:7b", "second_wins"),
        ("b", "gemma3:4b", "first_wins"),
        ("tie", None, "ties"),
        ("both_bad", None, "both_bad"),
    ],
)
def test_winner_and_counter_follow_the_choice(
    choice: str,
    winner: str | None,
    counter: str,
    book: VoteBook,
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    # model_a sorts after model_b: the pair is stored as (gemma3:4b, mistral:7b).
    book.record("mistral:7b", "gemma3:4b", choice, battle_id="b1", now=NOW)
    [line] = lines_of(json_log[1])
    assert line["winner"] == winner and line["choice"] == choice
    [pair] = book.store.pair_counts()
    assert (pair.first, pair.second) == ("gemma3:4b", "mistral:7b")
    assert getattr(pair, counter) == 1 and pair.battles == 1


def test_timestamp_is_converted_to_utc(
    book: VoteBook, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    local = NOW.astimezone(timezone(timedelta(hours=-5)))
    book.record("a", "b", "tie", battle_id="b1", now=local)
    [line] = lines_of(json_log[1])
    assert line["timestamp"] == "2025-03-04T05:06:07.891Z"


def test_default_timestamp_is_now(
    book: VoteBook, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    before = datetime.now(UTC)
    book.record("a", "b", "a", battle_id="b1")
    after = datetime.now(UTC)
    [line] = lines_of(json_log[1])
    stamp = datetime.fromisoformat(line["timestamp"])
    assert before - timedelta(milliseconds=1) <= stamp <= after


def test_a_second_vote_on_a_battle_is_refused_and_not_logged(
    book: VoteBook, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    book.record("a", "b", "a", battle_id="b1")
    with pytest.raises(AlreadyVoted, match="voted on already"):
        book.record("a", "b", "b", battle_id="b1")
    assert len(lines_of(json_log[1])) == 1
    assert book.store.vote_count() == 1


@pytest.mark.parametrize("choice", ["A", "", None, "bothbad", 1])
def test_invalid_choice_names_the_valid_values(
    choice: object, book: VoteBook, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    with pytest.raises(ValueError) as caught:
        book.record("a", "b", choice, battle_id="b1")  # type: ignore[arg-type]
    for valid in VALID_CHOICES:
        assert valid in str(caught.value)
    assert json_log[1].getvalue() == ""
    assert book.store.vote_count() == 0


def test_bad_models_and_naive_time_are_refused(
    book: VoteBook, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    with pytest.raises(ValueError, match="two different models"):
        book.record("gemma3:4b", "gemma3:4b", "a", battle_id="b1")
    with pytest.raises(ValueError, match="model_b must be a non-empty model name"):
        book.record("gemma3:4b", " ", "a", battle_id="b1")
    with pytest.raises(ValueError, match="timezone-aware"):
        book.record("a", "b", "a", battle_id="b1", now=datetime(2025, 1, 1))
    assert json_log[1].getvalue() == ""


def test_a_store_that_cannot_be_written_says_not_saved_and_logs_no_vote(
    tmp_path: Path, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    # A directory where the database file should be: SQLite cannot open it.
    (tmp_path / "votes.sqlite3").mkdir()
    book = VoteBook(f"sqlite:///{tmp_path / 'votes.sqlite3'}", json_log[0])
    with pytest.raises(VoteNotSaved) as caught:
        book.record("a", "b", "a", battle_id="b1")
    assert "could not be saved" in caught.value.user_message
    assert str(tmp_path) not in caught.value.user_message  # internals stay in the log
    assert json_log[1].getvalue() == ""


def test_votes_survive_a_new_vote_book_on_the_same_file(tmp_path: Path) -> None:
    setting = f"sqlite:///{tmp_path / 'votes.sqlite3'}"
    quiet = logging.getLogger("test.votes.quiet")
    VoteBook(setting, quiet).record("a", "b", "a", battle_id="b1")
    again = VoteBook(setting, quiet)  # a restarted process
    assert [r.votes for r in again.ratings()] == [1, 1]
    with pytest.raises(AlreadyVoted):
        again.record("a", "b", "b", battle_id="b1")


# --- JSON log formatter --------------------------------------------------------------------
def test_formatter_keeps_exception_text_out(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    try:
        raise RuntimeError("token eyJhbGciOi.secret-part leaked\nsecond line")
    except RuntimeError:
        logger.exception("backend call failed for %s", "gemma3:4b")
    logger.warning("slow start")
    output = stream.getvalue()
    assert "secret-part" not in output
    assert "Traceback" not in output
    first, second = lines_of(stream)  # exactly two lines: one per record
    assert first["severity"] == "ERROR"
    assert first["message"] == "backend call failed for gemma3:4b"
    assert first["exception_type"] == "RuntimeError"
    assert first["logger"] == logger.name
    assert second["severity"] == "WARNING"
    datetime.fromisoformat(second["timestamp"])


def test_formatter_keeps_multiline_messages_on_one_line(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.info("line one\nline two", extra={"json_fields": {"count": 3, "when": NOW}})
    [line] = lines_of(stream)
    assert line["message"] == "line one\nline two"
    assert line["count"] == 3
    assert line["when"] == str(NOW)  # not JSON-native: written as text rather than failing


# --- leaderboard table ---------------------------------------------------------------------
def test_markdown_table_escapes_names_and_notes_shared_ranks() -> None:
    hostile = "weird|name_*\n| 9 | ![x](http://evil/x.png) | [click](http://evil)"
    ratings = rate(
        [
            PairCounts("gemma3:4b", hostile, first_wins=1),
            PairCounts("gemma3:4b", "mistral:7b", ties=1),
        ]
    )
    text = format_leaderboard_markdown(ratings, display_names={"gemma3:4b": "Gemma 3 4B"})
    lines = text.splitlines()
    assert lines[0].startswith("| Rank | Model | Rating | 95% interval | Votes |")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, one row per model: no injected rows
    assert all(line.count("|") - line.count("\\|") == 9 for line in table)
    assert "weird\\|name\\_\\*" in text  # escaped: the table keeps its columns
    assert not re.search(r"(?<!\\)\]\(", text)  # no link or image syntax survives
    assert "Gemma 3 4B" in text
    # Three votes cannot separate three models: the note says so.
    assert "Not separated by the votes so far" in text
    assert format_leaderboard_markdown([]).startswith("_No votes yet")
