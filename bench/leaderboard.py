"""The leaderboard's cost with 100 000 votes: reading the per-pair counts and fitting
Bradley-Terry with its bootstrap, side by side with reading every vote.

    .venv/bin/python -m bench.leaderboard [--votes 100000] [--models 8] [--repeat 5]

The votes go into a real SQLite vote store (ui/votes/store.py) in one bulk transaction
(the bench measures reading, not 100 000 separate writes)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import load_note, table
from ui.votes.ratings import rate
from ui.votes.store import SqliteVoteStore, Vote, pair_outcome


def fill(store: SqliteVoteStore, votes: int, models: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    names = [f"model-{k}" for k in range(models)]
    strengths = {n: 1000 + 40 * k for k, n in enumerate(names)}
    rows, counts = [], {}
    for n in range(votes):
        a, b = (names[k] for k in rng.choice(models, 2, replace=False))
        p_a = 1 / (1 + 10 ** ((strengths[b] - strengths[a]) / 400))
        choice = "tie" if rng.random() < 0.1 else ("a" if rng.random() < p_a else "b")
        vote = Vote(f"battle-{n}", a, b, choice, "2026-11-30T00:00:00.000Z")
        rows.append((vote.battle_id, a, b, choice, vote.timestamp))
        first, second, counter = pair_outcome(vote)
        cell = counts.setdefault(
            (first, second), dict.fromkeys(("first_wins", "second_wins", "ties", "both_bad"), 0)
        )
        cell[counter] += 1
    db = store._connection()
    db.execute("BEGIN")
    db.executemany("INSERT INTO votes VALUES (?, ?, ?, ?, ?)", rows)
    db.executemany(
        "INSERT INTO pair_counts VALUES (?, ?, ?, ?, ?, ?)",
        [
            (f, s, c["first_wins"], c["second_wins"], c["ties"], c["both_bad"])
            for (f, s), c in counts.items()
        ],
    )
    db.execute("COMMIT")


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--votes", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteVoteStore(Path(folder) / "votes.sqlite3")
        fill(store, args.votes, args.models)
        assert store.vote_count() == args.votes
        read_counts = timed(store.pair_counts, args.repeat)
        counts = store.pair_counts()
        fit = timed(lambda: rate(counts), args.repeat)
        all_votes = timed(
            lambda: store._connection().execute("SELECT * FROM votes").fetchall(), args.repeat
        )
    print(load_note())
    print()
    print(
        table(
            ["step", "median time", "rows read"],
            [
                [
                    "read the per-pair counts (what the leaderboard does)",
                    f"{read_counts * 1000:.2f} ms",
                    len(counts),
                ],
                ["Bradley-Terry fit + 100 bootstrap refits", f"{fit * 1000:.0f} ms", "-"],
                ["leaderboard in all", f"{(read_counts + fit) * 1000:.0f} ms", "-"],
                ["for comparison: read every vote", f"{all_votes * 1000:.0f} ms", args.votes],
            ],
        )
    )
    print(f"\n{args.votes} votes, {args.models} models, median of {args.repeat} runs.")


if __name__ == "__main__":
    main()
