"""The list a user in an interleaving experiment sees: the two arms' pipelines run on the same
request and their lists merged by team draft (``recstack.experiments.interleaving``). Each shown
item keeps its row (score, source, exploration flag) from the arm that placed it."""

from __future__ import annotations

import numpy as np

from recstack.experiments.interleaving import TEAM_A, team_draft
from recstack.serving.ops.base import Candidates


def interleave(
    a: Candidates, b: Candidates, n: int, rng: np.random.Generator
) -> tuple[Candidates, list[int]]:
    """(the merged candidates, the team of each: 0 for ``a``, 1 for ``b``)."""
    items, teams = team_draft(a.items.tolist(), b.items.tolist(), n, rng)
    row_a = {item: row for row, item in enumerate(a.items.tolist())}
    row_b = {item: row for row, item in enumerate(b.items.tolist())}
    rows = [row_a[i] if t == TEAM_A else row_b[i] for i, t in zip(items, teams, strict=True)]
    merged = [(a if t == TEAM_A else b) for t in teams]

    def column(name: str, default: object) -> list[object]:
        out = []
        for source, row in zip(merged, rows, strict=True):
            values = getattr(source, name)
            out.append(values[row] if values is not None else default)
        return out

    return (
        Candidates(
            np.array(items, dtype=np.int64),
            np.array(column("scores", 0.0), dtype=np.float64),
            np.array(column("sources", ""), dtype=object),
            explore=np.array(column("explore", False), dtype=bool),
        ),
        teams,
    )
