"""Bradley-Terry ratings with bootstrap intervals (ui/votes/ratings.py), checked on votes drawn
from known strengths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ui.votes.ratings import rate, shared_ranks
from ui.votes.store import PairCounts


def simulate(strengths: dict[str, float], votes: int, seed: int) -> list[PairCounts]:
    """Votes between random pairs, won as Bradley-Terry with these ratings predicts
    (scale 400, base 10), aggregated as the store keeps them."""
    rng = np.random.default_rng(seed)
    names = sorted(strengths)
    cells: dict[tuple[str, str], list[int]] = {}
    for _ in range(votes):
        a, b = rng.choice(len(names), 2, replace=False)
        first, second = sorted((names[a], names[b]))
        p_first = 1 / (1 + 10 ** ((strengths[second] - strengths[first]) / 400))
        cell = cells.setdefault((first, second), [0, 0])
        cell[0 if rng.random() < p_first else 1] += 1
    return [PairCounts(f, s, first_wins=w, second_wins=lost) for (f, s), (w, lost) in cells.items()]


# Centred on 1000, as the fitted ratings are.
TRUE = {"m0": 850.0, "m1": 925.0, "m2": 1000.0, "m3": 1075.0, "m4": 1150.0}


def test_the_fitted_order_and_scale_match_the_true_strengths() -> None:
    ratings = rate(simulate(TRUE, 20_000, seed=1))
    assert [r.model for r in ratings] == ["m4", "m3", "m2", "m1", "m0"]
    for r in ratings:
        assert r.rating == pytest.approx(TRUE[r.model], abs=15)
        assert r.lower < r.rating < r.upper
    assert np.mean([r.rating for r in ratings]) == pytest.approx(1000.0)
    # 75 points apart and 8 000 votes each: every interval is clear of its neighbours'.
    assert [r.rank for r in ratings] == [1, 2, 3, 4, 5] and shared_ranks(ratings) == []


def test_the_true_strength_lies_inside_the_interval_in_most_runs() -> None:
    inside = total = 0
    for seed in range(20):
        for r in rate(simulate(TRUE, 1_500, seed=100 + seed)):
            inside += r.lower <= TRUE[r.model] <= r.upper
            total += 1
    # A 95 % interval; the weak prior pulls a little towards 1000, so allow some slack.
    assert inside / total >= 0.85, f"{inside} of {total}"


def test_ties_and_both_bad_count_as_half_a_win_each() -> None:
    as_draws = rate([PairCounts("a", "b", first_wins=10, ties=6, both_bad=4)], rounds=0)
    as_halves = rate([PairCounts("a", "b", first_wins=15, second_wins=5)], rounds=0)
    assert [r.rating for r in as_draws] == pytest.approx([r.rating for r in as_halves])
    a, b = as_draws
    assert (a.wins, a.losses, a.ties, a.both_bad, a.votes) == (10, 0, 10, 4, 20)
    assert (b.wins, b.losses, b.ties, b.both_bad, b.votes) == (0, 10, 10, 4, 20)


def test_the_scale_is_elo_like() -> None:
    # 1000 votes at 76 %: a gap of 400 * log10(76 / 24), about 200 points.
    (top, bottom) = rate([PairCounts("a", "b", first_wins=760, second_wins=240)], rounds=0)
    assert top.rating - bottom.rating == pytest.approx(400 * math.log10(760 / 240), abs=2)
    assert (top.rating + bottom.rating) / 2 == pytest.approx(1000.0)


def test_a_clean_sweep_gives_finite_ratings() -> None:
    top, bottom = rate([PairCounts("a", "b", first_wins=5)])
    assert math.isfinite(top.rating) and top.rating > 1000 > bottom.rating
    assert math.isfinite(top.upper) and math.isfinite(bottom.lower)


def test_few_votes_share_a_rank_and_unvoted_models_come_last() -> None:
    counts = [PairCounts("a", "b", first_wins=2, second_wins=1), PairCounts("b", "c", ties=1)]
    ratings = rate(counts, models=["new"])
    assert ratings[-1].model == "new" and ratings[-1].votes == 0
    assert ratings[-1].rank == 4
    assert {r.rank for r in ratings[:3]} == {1}
    assert shared_ranks(ratings) == [[r.model for r in ratings[:3]]]


def test_the_bootstrap_is_seeded_so_the_page_is_stable() -> None:
    counts = simulate(TRUE, 500, seed=7)
    assert rate(counts) == rate(counts)


def test_no_votes_no_rows() -> None:
    assert rate([]) == []
