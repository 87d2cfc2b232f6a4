"""The vote store contract (ui/votes/store.py), run against SQLite and the real Firestore
emulator alike: one vote per battle, counts that match the votes, under concurrency."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ui.votes.store import (
    AlreadyVoted,
    FirestoreVoteStore,
    PairCounts,
    SqliteVoteStore,
    Vote,
    VoteStore,
    VoteStoreError,
    pair_outcome,
)

WHEN = "2026-11-30T00:00:00.000Z"


def vote(battle: str, a: str, b: str, choice: str) -> Vote:
    return Vote(battle, a, b, choice, WHEN)


@pytest.fixture(params=["sqlite", "firestore"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VoteStore]:
    if request.param == "sqlite":
        yield SqliteVoteStore(tmp_path / "votes.sqlite3")
        return
    host = request.getfixturevalue("firestore_emulator")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)
    # A project of its own: the emulator keeps data per project, so this test starts empty.
    yield FirestoreVoteStore(project=f"test-{uuid.uuid4().hex[:12]}")


def test_votes_are_counted_per_pair_in_sorted_order(store: VoteStore) -> None:
    store.record(vote("b1", "mistral:7b", "gemma3:4b", "a"))  # mistral wins
    store.record(vote("b2", "gemma3:4b", "mistral:7b", "a"))  # gemma wins
    store.record(vote("b3", "gemma3:4b", "mistral:7b", "tie"))
    store.record(vote("b4", "hf.co/org/model:Q4", "gemma3:4b", "both_bad"))
    assert store.pair_counts() == [
        PairCounts("gemma3:4b", "hf.co/org/model:Q4", both_bad=1),
        PairCounts("gemma3:4b", "mistral:7b", first_wins=1, second_wins=1, ties=1),
    ]
    assert store.vote_count() == 4


def test_a_second_vote_on_the_same_battle_is_refused_by_the_store(store: VoteStore) -> None:
    store.record(vote("battle-1", "a", "b", "a"))
    with pytest.raises(AlreadyVoted):
        store.record(vote("battle-1", "a", "b", "b"))  # the same battle, other choice
    with pytest.raises(AlreadyVoted):
        store.record(vote("battle-1", "c", "d", "tie"))  # even claiming another pair
    assert store.pair_counts() == [PairCounts("a", "b", first_wins=1)]
    assert store.vote_count() == 1


def test_200_votes_from_20_concurrent_clients_are_each_counted_once(store: VoteStore) -> None:
    models = ["gemma", "llama", "mistral", "smollm"]
    votes = []
    for n in range(200):
        a, b = models[n % 4], models[(n // 4 + n + 1) % 4]
        if a == b:
            b = models[(models.index(a) + 1) % 4]
        votes.append(vote(f"battle-{n}", a, b, ("a", "b", "tie", "both_bad")[n % 4]))
    replays = votes[::10]  # 20 of them sent a second time, concurrently with the rest
    refused = Counter[str]()
    lock = threading.Lock()

    def send(v: Vote) -> None:
        try:
            store.record(v)
        except AlreadyVoted:
            with lock:
                refused[v.battle_id] += 1

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(send, votes + replays))

    assert sum(refused.values()) == len(replays)  # each replay refused, no original lost
    assert store.vote_count() == 200
    expected: dict[tuple[str, str], Counter[str]] = {}
    for v in votes:
        first, second, counter = pair_outcome(v)
        expected.setdefault((first, second), Counter())[counter] += 1
    counts = {(c.first, c.second): c for c in store.pair_counts()}
    assert counts.keys() == expected.keys()
    for key, c in counts.items():
        want = expected[key]
        assert (c.first_wins, c.second_wins, c.ties, c.both_bad) == (
            want["first_wins"],
            want["second_wins"],
            want["ties"],
            want["both_bad"],
        )
    assert sum(c.battles for c in counts.values()) == 200


def test_an_unreachable_firestore_fails_within_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{s.getsockname()[1]}")
        dead = FirestoreVoteStore(project="test-unreachable")
        with pytest.raises(VoteStoreError):
            dead.record(vote("b1", "a", "b", "a"))
        with pytest.raises(VoteStoreError):
            dead.pair_counts()


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    """WAL mode and a busy timeout: writers in separate processes neither fail nor lose a
    vote, and a duplicate from the other process is refused."""
    import subprocess
    import sys

    path = tmp_path / "votes.sqlite3"
    script = (
        "import sys\n"
        "from ui.votes.store import SqliteVoteStore, Vote, AlreadyVoted\n"
        "s = SqliteVoteStore(sys.argv[1]); refused = 0\n"
        "for n in range(100):\n"
        "    try: s.record(Vote(f'battle-{n}', 'a', 'b', 'a', 'T'))\n"
        "    except AlreadyVoted: refused += 1\n"
        "print(refused)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for _ in range(2)
    ]
    refused = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(refused) == 100  # every battle voted once in all
    store = SqliteVoteStore(path)
    assert store.vote_count() == 100
    assert store.pair_counts() == [PairCounts("a", "b", first_wins=100)]
