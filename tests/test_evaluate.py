"""recstack evaluate: the champion and the challenger on one holdout, through the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from recstack.cli import app
from recstack.config import CalibrationKind, RankerKind, load_settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.evaluate import evaluate_bundles, registry_bundles
from recstack.events.parquet import ParquetEventLog
from recstack.train.rounds import train_and_register

runner = CliRunner()


def test_evaluate_compares_champion_and_challenger(tmp_path: Path) -> None:
    environ = {
        "RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"),
        "RECSTACK_TRAIN__PROGRESS": "false",
        "RECSTACK_TRAIN__EPOCHS": "2",
        "RECSTACK_TWO_TOWER__DIM": "16",
        "RECSTACK_TWO_TOWER__HIDDEN": "[32]",
        "RECSTACK_RETRIEVAL__INDEX": "flat",
        "RECSTACK_RETRIEVAL__SOURCES": '{"two_tower": 100, "item_cf": 50, "popularity": 50, "fresh": 20}',
        "RECSTACK_RANKING__MODEL": "lr",
        "RECSTACK_RANKING__CALIBRATION": "none",
    }
    settings = load_settings(None, environ)
    world = World.generate(n_users=150, n_items=300, seed=5)
    sim = Simulator(world, seed=5, requests_per_day=5_000)
    log = ParquetEventLog(settings.event_log_path())
    log.append_table(sim.catalog_events())
    for table in sim.run(RandomPolicy(world.n_items, seed=5), 2_500, 1_000):
        log.append_table(table)
    champion = train_and_register(settings, log)
    assert champion.promoted
    other = {"model": RankerKind.gbdt, "gbdt_rounds": 50, "calibration": CalibrationKind.isotonic}
    gbdt = settings.model_copy(update={"ranking": settings.ranking.model_copy(update=other)})
    challenger = train_and_register(gbdt, log, promote=False)
    log.close()

    result = runner.invoke(app, ["evaluate"], env=environ)
    assert result.exit_code == 0, result.output
    assert "champion (v1)" in result.output and "challenger (v2)" in result.output
    for row in (
        "click auc",
        "click gauc",
        "click ece",
        "two_tower recall@10",
        "item_cf ndcg@20",
        "merged recall@20",
    ):
        assert row in result.output
    assert (tmp_path / "state" / "evaluate" / "evaluate.png").stat().st_size > 1_000
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri())
    runs = mlflow.search_runs(
        experiment_names=[settings.tracking.experiment], filter_string="tags.mlflow.runName LIKE 'evaluate_%'"
    )
    assert sorted(runs["tags.mlflow.runName"]) == ["evaluate_challenger", "evaluate_champion"]
    assert runs["metrics.click_auc"].notna().all() and runs["metrics.merged_recall_at_20"].notna().all()

    results = evaluate_bundles(
        settings, ParquetEventLog(settings.event_log_path()), registry_bundles(settings)
    )
    assert [r.version for r in results] == [champion.version, challenger.version]
    for r in results:
        assert r.ranking["click"]["auc"] > 0.5  # the simulator's clicks depend on user and item
        for figures in r.retrieval.values():
            assert all(0 <= v <= 1 for v in figures.values())
        # the merge takes the first source's quota (100) first: its top 20 are the two-tower's top 20,
        # filled from the next sources where the two-tower had fewer
        merged, first = r.retrieval["merged"], r.retrieval["two_tower"]
        assert (
            merged["recall@20"] >= first["recall@20"] - 1e-12
            and merged["ndcg@10"] >= first["ndcg@10"] - 1e-12
        )
    # the holdout is training's (the last 10% of impressions) and the champion is uncalibrated: its
    # AUC here is its training holdout AUC, but for the retrieval score, which training took with
    # each user's sampled training history and evaluation with the live history before the holdout
    assert abs(results[0].ranking["click"]["auc"] - champion.metrics["auc_click"]) < 0.01
    bad = runner.invoke(app, ["evaluate", "--holdout", "1.5"], env=environ)
    assert bad.exit_code != 0 and "between 0 and 1" in bad.output
    assert np.isfinite(results[1].ranking["click"]["logloss"])
