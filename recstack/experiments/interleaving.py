"""Team-draft interleaving (Radlinski, Kurup & Joachims 2008): two rankers compared on the same
requests. The two lists are merged as two captains pick teams: a coin flip decides who picks first
in each round, each picks its best item not yet picked, and every shown item remembers its team. A
click credits the team of the clicked item; a request where one team got more clicks is a win for
its ranker.

``preference`` turns per-request credits into a per-user score (the share of a user's decided
requests that A won, minus one half) and tests it against zero: users are the unit, as in an A/B
test, so the two designs' sensitivities compare by the users each needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

TEAM_A, TEAM_B = 0, 1


def team_draft(
    a: Sequence[int], b: Sequence[int], n: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Interleave rankings ``a`` and ``b`` into ``n`` items; returns (items, team of each item)."""
    rankings = (a, b)
    next_of = [0, 0]  # each ranker's first position not yet considered
    items: list[int] = []
    teams: list[int] = []
    taken: set[int] = set()
    count = [0, 0]

    def best_left(team: int) -> int | None:
        """The position of the team's best item not yet taken (None: its ranking is used up)."""
        ranking, pos = rankings[team], next_of[team]
        while pos < len(ranking) and ranking[pos] in taken:
            pos += 1
        next_of[team] = pos
        return pos if pos < len(ranking) else None

    while len(items) < n:
        # the team with fewer picks goes next; a tie is broken by a coin flip
        turn = TEAM_A if count[0] < count[1] else TEAM_B if count[1] < count[0] else int(rng.integers(2))
        pos = best_left(turn)
        if pos is None:  # this ranker is exhausted: the other picks
            turn = 1 - turn
            pos = best_left(turn)
            if pos is None:
                break
        item = int(rankings[turn][pos])
        items.append(item)
        teams.append(turn)
        taken.add(item)
        count[turn] += 1
        next_of[turn] = pos + 1
    return items, teams


def credit(teams: Sequence[int], clicked: Sequence[bool]) -> int:
    """+1 when team A got more clicks in this request, -1 when B did, 0 for a tie (or no click)."""
    t = np.asarray(teams)
    c = np.asarray(clicked, dtype=bool)
    wins_a, wins_b = int((c & (t == TEAM_A)).sum()), int((c & (t == TEAM_B)).sum())
    return int(np.sign(wins_a - wins_b))


@dataclass(frozen=True)
class Preference:
    users: int  # users with at least one decided request
    score: float  # mean over users of (share of decided requests A won - 1/2)
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return not (self.ci_low <= 0 <= self.ci_high)


def preference(users: np.ndarray, credits: np.ndarray, alpha: float = 0.05) -> Preference:
    """Per-user preference for A from per-request ``credits`` (+1, 0, -1) and their ``users``."""
    users = np.asarray(users)
    credits = np.asarray(credits)
    decided = credits != 0
    if not decided.any():
        return Preference(0, 0.0, 0.0, 0.0, 1.0)
    codes, inverse = np.unique(users[decided], return_inverse=True)
    wins = np.bincount(inverse, weights=(credits[decided] > 0).astype(np.float64))
    total = np.bincount(inverse).astype(np.float64)
    per_user = wins / total - 0.5  # (U,)
    n = len(codes)
    mean = float(per_user.mean())
    if n < 2 or per_user.std() == 0:
        return Preference(n, mean, mean, mean, 1.0 if mean == 0 else 0.0)
    result = stats.ttest_1samp(per_user, 0.0)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * float(per_user.std(ddof=1)) / np.sqrt(n)
    return Preference(n, mean, mean - half, mean + half, float(result.pvalue))
