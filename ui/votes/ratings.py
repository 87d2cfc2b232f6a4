"""Leaderboard ratings from per-pair vote counts, as Chatbot Arena publishes them.

Bradley-Terry by maximum likelihood: P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400)), the
ratings centred on 1000. A tie and "both are bad" count as half a win for each side. The
fit runs on the aggregated counts (scipy's L-BFGS on the exact log-likelihood and its
gradient), so its cost depends on the number of models, not of votes.

A weak prior keeps every rating finite (a model that won all its few battles would
otherwise be rated at infinity): each model is counted as if it had drawn one battle with
an average model. It moves ratings by a few points once a model has dozens of votes.

95 % intervals come from a bootstrap over the votes: the vote counts are resampled
(multinomial over the pair/outcome cells, the same as resampling the votes themselves)
and refitted. The rank is Arena's: 1 + the number of models whose interval lies wholly
above this model's, so models whose intervals overlap share a rank.

Why no online Elo: it depends on the order of the votes (the store keeps only counts) and
on K; Bradley-Terry is the order-free estimate that the Elo updates approximate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy.optimize import minimize

from ui.votes.store import PairCounts

SCALE: Final = 400.0
BASE: Final = 1000.0
BOOTSTRAP_ROUNDS: Final = 100
PRIOR_DRAWS: Final = 1.0  # virtual draws per model against an average model
_LN10: Final = math.log(10.0)


@dataclass(frozen=True)
class Rating:
    model: str
    rating: float
    lower: float  # 95 % bootstrap interval
    upper: float
    rank: int  # 1 + models rated surely above (interval wholly above this one's)
    votes: int
    wins: int
    losses: int
    ties: int  # includes both_bad
    both_bad: int


def _outcome_matrix(
    counts: Sequence[PairCounts], index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cells): for each pair, the model indices and its four outcome counts."""
    i = np.array([index[c.first] for c in counts], dtype=np.intp)
    j = np.array([index[c.second] for c in counts], dtype=np.intp)
    cells = np.array(
        [[c.first_wins, c.second_wins, c.ties, c.both_bad] for c in counts], dtype=float
    ).reshape(len(counts), 4)
    return i, j, cells


def _fit(
    i: np.ndarray, j: np.ndarray, cells: np.ndarray, n_models: int, start: np.ndarray
) -> np.ndarray:
    """Maximum-likelihood strengths (natural-log units), mean zero."""
    draws = cells[:, 2] + cells[:, 3]
    w_ij = cells[:, 0] + 0.5 * draws  # i's score against j
    w_ji = cells[:, 1] + 0.5 * draws

    def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
        d = beta[i] - beta[j]
        # -log P(i beats j) = log(1 + e^-d), computed without overflow.
        nll = float(np.sum(w_ij * np.logaddexp(0.0, -d) + w_ji * np.logaddexp(0.0, d)))
        p = 1.0 / (1.0 + np.exp(-d))
        g_pair = -w_ij * (1.0 - p) + w_ji * p  # d nll / d d
        grad = np.bincount(i, g_pair, n_models) - np.bincount(j, g_pair, n_models)
        # Prior: one virtual draw per model against strength 0.
        prior = 0.5 * np.logaddexp(0.0, -beta) + 0.5 * np.logaddexp(0.0, beta)
        nll += float(PRIOR_DRAWS * np.sum(prior))
        q = 1.0 / (1.0 + np.exp(-beta))
        grad += PRIOR_DRAWS * (q - 0.5)
        return nll, grad

    result = minimize(loss, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-8})
    beta = np.asarray(result.x, dtype=float)
    return beta - beta.mean()


def _to_rating(beta: np.ndarray) -> np.ndarray:
    return BASE + SCALE * beta / _LN10


def rate(
    counts: Iterable[PairCounts],
    *,
    models: Iterable[str] = (),
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> list[Rating]:
    """Ratings with intervals, best first. `models` adds rows for models with no votes yet
    (rated 1000, interval unknown: lower = upper = 1000, votes = 0). The bootstrap is
    seeded, so the same counts always show the same intervals."""
    counted = [c for c in counts if c.battles > 0 and c.first != c.second]
    names = sorted({*models, *(c.first for c in counted), *(c.second for c in counted)})
    if not names:
        return []
    index = {name: k for k, name in enumerate(names)}
    i, j, cells = _outcome_matrix(counted, index)
    n = len(names)
    beta = _fit(i, j, cells, n, np.zeros(n))
    point = _to_rating(beta)

    total = int(cells.sum())
    if total and rounds > 0:
        rng = np.random.default_rng(seed)
        flat = cells.ravel()
        samples = np.empty((rounds, n))
        for r in range(rounds):
            drawn = rng.multinomial(total, flat / total).reshape(cells.shape).astype(float)
            samples[r] = _to_rating(_fit(i, j, drawn, n, beta))
        lower, upper = np.percentile(samples, [2.5, 97.5], axis=0)
    else:
        lower = upper = point

    wins = np.bincount(i, cells[:, 0], n) + np.bincount(j, cells[:, 1], n)
    losses = np.bincount(i, cells[:, 1], n) + np.bincount(j, cells[:, 0], n)
    draws = cells[:, 2] + cells[:, 3]
    ties = np.bincount(i, draws, n) + np.bincount(j, draws, n)
    both_bad = np.bincount(i, cells[:, 3], n) + np.bincount(j, cells[:, 3], n)
    votes = wins + losses + ties
    # A model with no votes has no interval to compare: it ranks below every rated one.
    rated = votes > 0
    rows = []
    for k, name in enumerate(names):
        above = int(np.sum(rated & (lower > upper[k]))) if rated[k] else int(np.sum(rated))
        rows.append(
            Rating(
                model=name,
                rating=float(point[k]),
                lower=float(lower[k]),
                upper=float(upper[k]),
                rank=1 + above,
                votes=int(votes[k]),
                wins=int(wins[k]),
                losses=int(losses[k]),
                ties=int(ties[k]),
                both_bad=int(both_bad[k]),
            )
        )
    return sorted(rows, key=lambda r: (r.rank, -r.rating, r.model))


def shared_ranks(ratings: Sequence[Rating]) -> list[list[str]]:
    """Groups of rated models that share a rank (their intervals overlap): the data does
    not say which of them is better."""
    groups: dict[int, list[str]] = {}
    for r in ratings:
        if r.votes:
            groups.setdefault(r.rank, []).append(r.model)
    return [g for g in groups.values() if len(g) > 1]
