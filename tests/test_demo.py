from __future__ import annotations

import pytest
from rich.console import Console

from recstack.config import Settings
from recstack.demo import run_demo


@pytest.mark.slow
def test_demo_runs_the_spine_end_to_end(settings: Settings) -> None:
    out = run_demo(settings, console=Console(quiet=True))
    assert out["rejected"] == 2
    assert out["accepted"] > 300 + 400 + 150_000  # items, users, impressions, and the engagements
    ctr = out["ctr_by_position"]
    assert len(ctr) == 10
    # the examination curve falls with position, so observed CTR must too (top vs bottom of the list)
    assert ctr[0] > 1.5 * ctr[-1]
    assert out["mf"]["ndcg@20"] > out["popularity"]["ndcg@20"]
