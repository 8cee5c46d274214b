from __future__ import annotations

from rich.console import Console

from recstack.config import Settings
from recstack.playground import PlaygroundConfig, run_playground


def test_playground_closes_the_loop_over_http(settings: Settings) -> None:
    config = PlaygroundConfig(
        users=150, items=300, held_back=40, history_requests=2_000, rounds=2, requests_per_round=120
    )
    results = run_playground(settings, Console(quiet=True), config=config)
    assert [r.round for r in results] == [1, 2]
    for r in results:
        assert 0 < r.ctr < 1 and 0 < r.true_ctr < 1
        assert r.funnel["retrieve"] >= r.funnel["rerank"] > 0  # the funnel narrows
        assert r.auc_click is not None
        # the users searched too, typing with autocomplete's suggestions: MRR 0.66 and 0.62 on
        # 2026-12-07; its standard error over 150 searches is about 0.035, so 0.3 fails only on a
        # broken route or index
        assert r.searches == config.searches_per_round
        assert 0.3 < r.search_mrr <= 1.0
    # the users' wants are topical (the simulator's): the topic boost ranked the wanted item higher,
    # by 0.027 and 0.031 of MRR (the same searches, paired; about three standard errors)
    assert sum(r.search_mrr - r.search_mrr_plain for r in results) > 0
    assert results[-1].explore_share > 0  # new items arrived and were explored
    report = settings.paths.state_dir / "playground" / "report.html"
    assert "Online rounds" in report.read_text() and report.read_text().count("<img") == 3
