from __future__ import annotations

import numpy as np

from recstack.experiments.interleaving import TEAM_A, TEAM_B, credit, preference, team_draft


def test_team_draft_interleaves_fairly() -> None:
    rng = np.random.default_rng(0)
    a, b = [1, 2, 3, 4, 5, 6], [4, 1, 7, 8, 2, 9]
    for _ in range(50):
        items, teams = team_draft(a, b, 6, rng)
        assert len(set(items)) == 6
        assert abs(teams.count(TEAM_A) - teams.count(TEAM_B)) <= 1
        # each team's picks are in its ranker's order and are its best not yet taken
        assert [i for i, t in zip(items, teams, strict=True) if t == TEAM_A] == sorted(
            [i for i, t in zip(items, teams, strict=True) if t == TEAM_A], key=a.index
        )
    items, teams = team_draft([1, 2], [3, 4, 5, 6], 5, rng)  # A runs out: B fills
    assert sorted(items) == [1, 2, 3, 4, 5]


def test_credit_and_preference() -> None:
    assert credit([0, 1, 0], [True, False, False]) == 1
    assert credit([0, 1], [True, True]) == 0
    assert credit([0, 1], [False, True]) == -1
    rng = np.random.default_rng(1)
    users = rng.integers(500, size=5000)
    wins = np.where(rng.random(5000) < 0.6, 1, -1)  # A wins 60% of decided requests
    pref = preference(users, wins)
    assert pref.significant and 0.05 < pref.score < 0.15
    assert preference(users, np.zeros(5000, int)).users == 0
