"""Blind battle votes, vote log and leaderboard (ui/votes.py)."""

from __future__ import annotations

import io
import json
import logging
import random
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ui.votes import (
    VALID_CHOICES,
    JsonLogFormatter,
    LeaderboardRow,
    OncePerBattle,
    format_leaderboard_markdown,
    leaderboard,
    load_votes,
    pick_battle_pair,
    read_vote_log,
    record_vote,
)

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
def test_record_vote_emits_one_json_log_line(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    vote = record_vote("gemma3:4b", "llama3.2:3b", "a", logger=logger, now=NOW)

    [line] = lines_of(stream)
    assert line["severity"] == "INFO"
    assert line["event"] == "battle_vote"
    assert line["model_a"] == "gemma3:4b"
    assert line["model_b"] == "llama3.2:3b"
    assert line["choice"] == "a"
    assert line["winner"] == "gemma3:4b"
    assert "gemma3:4b" in line["message"] and "llama3.2:3b" in line["message"]
    assert line["timestamp"].endswith("Z")
    assert datetime.fromisoformat(line["timestamp"]) == NOW
    assert {k: line[k] for k in vote} == vote


@pytest.mark.parametrize(
    ("choice", "winner"),
    [("a", "gemma3:4b"), ("b", "mistral:7b"), ("tie", None), ("both_bad", None)],
)
def test_winner_follows_the_choice(
    choice: str, winner: str | None, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, stream = json_log
    record_vote("gemma3:4b", "mistral:7b", choice, logger=logger, now=NOW)
    [line] = lines_of(stream)
    assert line["winner"] == winner
    assert line["choice"] == choice


def test_timestamp_is_converted_to_utc(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    local = NOW.astimezone(timezone(timedelta(hours=-5)))
    record_vote("a", "b", "tie", logger=logger, now=local)
    [line] = lines_of(stream)
    assert line["timestamp"] == "2025-03-04T05:06:07.891Z"


def test_default_timestamp_is_now(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    before = datetime.now(UTC)
    record_vote("a", "b", "a", logger=logger)
    after = datetime.now(UTC)
    [line] = lines_of(stream)
    stamp = datetime.fromisoformat(line["timestamp"])
    assert before - timedelta(milliseconds=1) <= stamp <= after


def test_vote_is_appended_to_the_vote_log(
    tmp_path: Path, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, stream = json_log
    path = tmp_path / "votes" / "votes.jsonl"  # the folder is created on first vote
    first = record_vote("gemma3:4b", "llama3.2:3b", "b", logger=logger, vote_log_path=path, now=NOW)
    second = record_vote("mistral:7b", "gemma3:4b", "both_bad", logger=logger, vote_log_path=path)

    file_lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in file_lines] == [first, second]
    # The log stream carries the same vote objects (plus the formatter's logger name).
    logged = lines_of(stream)
    assert len(logged) == 2
    assert [{k: entry[k] for k in first} for entry in logged] == [first, second]
    assert load_votes(path) == [first, second]


def test_concurrent_votes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "votes.jsonl"
    quiet = logging.getLogger(f"test.votes.quiet.{uuid.uuid4().hex}")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    long_name = "m" * 150  # long lines make torn writes more likely to show

    def vote_many(worker: int) -> None:
        for i in range(50):
            record_vote(
                f"{long_name}{worker}", f"other{i}", "tie", logger=quiet, vote_log_path=path
            )

    threads = [threading.Thread(target=vote_many, args=(w,)) for w in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads very often, so that torn writes would show
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    report = read_vote_log(path)
    assert report.malformed == 0
    assert len(report.votes) == 400


@pytest.mark.parametrize("choice", ["A", "left", "", None, "both bad"])
def test_invalid_choice_names_the_valid_values(
    choice: object, tmp_path: Path, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, stream = json_log
    path = tmp_path / "votes.jsonl"
    with pytest.raises(ValueError) as caught:
        record_vote("a", "b", choice, logger=logger, vote_log_path=path)  # type: ignore[arg-type]
    for valid in VALID_CHOICES:
        assert valid in str(caught.value)
    assert stream.getvalue() == ""
    assert not path.exists()


def test_bad_models_and_naive_time_are_refused(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    with pytest.raises(ValueError, match="two different models"):
        record_vote("gemma3:4b", "gemma3:4b", "a", logger=logger)
    with pytest.raises(ValueError, match="model_b must be a non-empty model name"):
        record_vote("gemma3:4b", " ", "a", logger=logger)
    with pytest.raises(ValueError, match="timezone-aware"):
        record_vote("a", "b", "a", logger=logger, now=datetime(2025, 1, 1))
    assert stream.getvalue() == ""


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


# --- loading -------------------------------------------------------------------------------
def vote_line(a: str, b: str, choice: str) -> str:
    return json.dumps({"event": "battle_vote", "model_a": a, "model_b": b, "choice": choice})


def test_load_votes_skips_and_counts_malformed_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "votes.jsonl"
    path.write_text(
        "\n".join(
            [
                vote_line("x", "y", "a"),  # 1
                "not json",  # 2 malformed
                '{"event": "battle_vote", "model_a": "x"',  # 3 malformed: cut off
                "",  # 4 blank: ignored
                vote_line("x", "y", "maybe"),  # 5 malformed: bad choice
                vote_line("x", "x", "a"),  # 6 malformed: same model twice
                json.dumps({"event": "startup", "message": "hello"}),  # 7 other event: ignored
                "[1, 2, 3]",  # 8 malformed: not an object
                vote_line("y", "z", "both_bad"),  # 9
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    report = read_vote_log(path)
    assert [(v["model_a"], v["choice"]) for v in report.votes] == [("x", "a"), ("y", "both_bad")]
    assert report.malformed == 5
    assert report.malformed_lines == [2, 3, 5, 6, 8]

    with caplog.at_level(logging.WARNING, logger="ui.votes"):
        votes = load_votes(path)
    assert votes == report.votes
    assert "Skipped 5 malformed line(s)" in caplog.text


def test_missing_vote_log_means_no_votes(tmp_path: Path) -> None:
    assert load_votes(tmp_path / "absent.jsonl") == []


# --- leaderboard ---------------------------------------------------------------------------
def elo_expected(rating: float, opponent: float) -> float:
    return 1 / (1 + 10 ** ((opponent - rating) / 400))


def test_elo_matches_a_hand_computed_example() -> None:
    votes = [
        {"model_a": "A", "model_b": "B", "choice": "a"},  # A beats B
        {"model_a": "B", "model_b": "C", "choice": "tie"},  # B and C draw
        {"model_a": "A", "model_b": "C", "choice": "b"},  # C beats A
        {"model_a": "B", "model_b": "A", "choice": "both_bad"},  # scored as a draw
    ]
    k = 32
    a = b = c = 1000.0
    # 1: equal ratings, expected 0.5 each: A +16, B -16.
    e = elo_expected(a, b)
    a, b = a + k * (1 - e), b + k * (0 - (1 - e))
    assert (a, b) == (1016.0, 984.0)
    # 2: B (984) draws C (1000).
    e = elo_expected(b, c)
    b, c = b + k * (0.5 - e), c + k * (0.5 - (1 - e))
    # 3: C beats A.
    e = elo_expected(a, c)
    a, c = a + k * (0 - e), c + k * (1 - (1 - e))
    # 4: B draws A.
    e = elo_expected(b, a)
    b, a = b + k * (0.5 - e), a + k * (0.5 - (1 - e))

    rows = {row.model: row for row in leaderboard(votes)}
    assert rows["A"].elo == pytest.approx(a, abs=1e-9)
    assert rows["B"].elo == pytest.approx(b, abs=1e-9)
    assert rows["C"].elo == pytest.approx(c, abs=1e-9)
    assert sum(r.elo for r in rows.values()) == pytest.approx(3000)  # Elo is zero-sum

    assert (rows["A"].battles, rows["A"].wins, rows["A"].losses, rows["A"].ties) == (3, 1, 1, 1)
    assert (rows["B"].battles, rows["B"].wins, rows["B"].losses, rows["B"].ties) == (3, 0, 1, 2)
    assert (rows["C"].battles, rows["C"].wins, rows["C"].losses, rows["C"].ties) == (2, 1, 0, 1)
    assert (rows["A"].both_bad, rows["B"].both_bad, rows["C"].both_bad) == (1, 1, 0)
    assert rows["A"].win_rate == pytest.approx(1 / 3)
    assert rows["C"].win_rate == pytest.approx(1 / 2)
    assert rows["B"].win_rate == 0.0


def test_leaderboard_is_sorted_by_elo_and_lists_unplayed_models() -> None:
    votes = [{"model_a": "weak", "model_b": "strong", "choice": "b"}] * 3
    rows = leaderboard(votes, models=["strong", "weak", "new"])
    assert [r.model for r in rows] == ["strong", "new", "weak"]
    assert rows[1] == LeaderboardRow("new", elo=1000.0)
    assert rows[0].elo > 1000 > rows[2].elo


def test_a_battle_voted_on_twice_counts_once() -> None:
    first = {"model_a": "x", "model_b": "y", "choice": "a", "battle_id": "b1"}
    replay = {**first, "choice": "b"}  # the same battle again, e.g. at another instance
    other = {**first, "battle_id": "b2"}
    assert leaderboard([first, replay]) == leaderboard([first])
    rows = {r.model: r for r in leaderboard([first, replay, other])}
    assert (rows["x"].wins, rows["x"].battles, rows["y"].losses) == (2, 2, 2)
    # Votes logged before battle ids were recorded still count one by one.
    plain = {"model_a": "x", "model_b": "y", "choice": "a"}
    assert leaderboard([plain, plain])[0].battles == 2


def test_once_per_battle_refuses_a_second_claim_until_the_token_expired() -> None:
    once = OncePerBattle(ttl_s=100)
    assert once.claim("b1", issued_at=0, now=10)
    assert not once.claim("b1", issued_at=0, now=20)
    assert once.claim("b2", issued_at=0, now=20)
    for i in range(1001):  # enough to trigger forgetting expired battles
        once.claim(f"old{i}", issued_at=0, now=50)
    assert once.claim("new", issued_at=200, now=200)
    assert not once.claim("new", issued_at=200, now=201)
    # b1's token expired at 100: it was forgotten (its token is refused anyway).
    assert once.claim("b1", issued_at=0, now=202)


def test_a_draw_between_equals_changes_nothing() -> None:
    rows = leaderboard([{"model_a": "x", "model_b": "y", "choice": "tie"}])
    assert [r.elo for r in rows] == [1000.0, 1000.0]


def test_leaderboard_refuses_a_malformed_vote() -> None:
    with pytest.raises(ValueError, match="vote #1 is malformed"):
        leaderboard([vote_dict("x", "y", "a"), vote_dict("x", "y", "win")])


def vote_dict(a: str, b: str, choice: str) -> dict:
    return {"model_a": a, "model_b": b, "choice": choice}


def test_markdown_table(tmp_path: Path) -> None:
    rows = leaderboard(
        [vote_dict("gemma3:4b", "weird|name_*", "a"), vote_dict("gemma3:4b", "mistral:7b", "tie")]
    )
    text = format_leaderboard_markdown(rows, display_names={"gemma3:4b": "Gemma 3 4B"})
    lines = text.splitlines()
    assert lines[0].startswith("| # | Model | Elo |")
    assert lines[2].startswith("| 1 | Gemma 3 4B | ")
    assert f"| {rows[0].elo:.0f} | 2 | 1 | 0 | 1 | 50% |" in lines[2]
    assert "weird\\|name\\_\\*" in text  # escaped: the table keeps its columns
    assert all(line.count("|") - line.count("\\|") == 9 for line in lines)
    assert format_leaderboard_markdown([]).startswith("_No votes yet")
