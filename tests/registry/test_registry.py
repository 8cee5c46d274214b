"""One contract for the registry, run on SQLite and on PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstack.config import Settings, load_settings
from recstack.registry import Registry
from recstack.registry.mlflow_registry import RegistryError
from tests.conftest import service_unavailable

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _bundle(folder: Path, auc: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps({"format": 1, "metrics": {"auc_click": auc}}))
    return folder


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Settings]:
    env = {"RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"), "RECSTACK_REGISTRY__GATE_MARGIN": "0.01"}
    if request.param == "sqlite":
        yield load_settings(None, env)
        return
    import psycopg2

    try:
        admin = psycopg2.connect(DATABASE_URL, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        service_unavailable(f"PostgreSQL at {DATABASE_URL}", str(exc))
    admin.autocommit = True
    name = f"recstack_registry_{unique}"
    admin.cursor().execute(f"CREATE DATABASE {name}")
    base = DATABASE_URL.rsplit("/", 1)[0]
    try:
        yield load_settings(None, env | {"RECSTACK_REGISTRY__URI": f"{base}/{name}"})
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_register_gate_promote_and_rollback(settings: Settings, tmp_path: Path) -> None:
    registry = Registry(settings)
    v1 = registry.register(_bundle(tmp_path / "b1", 0.70), {"auc_click": 0.70}, {"data_end": "2026-11-01"})
    assert registry.promote(v1).passed and registry.alias("champion") == v1
    # a challenger within the margin does not pass; one beyond it does
    v2 = registry.register(_bundle(tmp_path / "b2", 0.705), {"auc_click": 0.705}, {"data_end": "2026-11-02"})
    registry.set_alias("challenger", v2)
    refused = registry.promote()
    assert not refused.passed and "does not beat" in refused.reason and registry.alias("champion") == v1
    v3 = registry.register(_bundle(tmp_path / "b3", 0.72), {"auc_click": 0.72}, {"data_end": "2026-11-03"})
    assert registry.promote(v3).passed and registry.alias("champion") == v3
    assert registry.rollback() == v1 and registry.alias("champion") == v1
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    fetched = registry.fetch(v3)
    assert json.loads((fetched / "bundle.json").read_text())["metrics"]["auc_click"] == 0.72
    rows = registry.versions()
    assert [r["version"] for r in rows] == [v1, v2, v3] and rows[0]["aliases"] == ["champion"]
    assert rows[2]["data_end"] == "2026-11-03"
    # the report's history: every promotion and rollback with its time and reason, oldest first
    log = registry.alias_log()
    assert [(e["action"], e["version"]) for e in log] == [("promote", v1), ("promote", v3), ("rollback", v1)]
    assert "no champion yet" in log[0]["reason"] and log[2]["reason"] == f"rolled back from {v3}"
    assert log[0]["at"] <= log[1]["at"] <= log[2]["at"]


def test_gate_uses_the_champion_score_on_the_same_holdout(settings: Settings, tmp_path: Path) -> None:
    registry = Registry(settings)
    v1 = registry.register(_bundle(tmp_path / "b1", 0.90), {"auc_click": 0.90}, {})
    registry.promote(v1)
    # on its own holdout the challenger looks worse (0.80 < 0.90), but on that same holdout the
    # champion scores 0.70: the comparison on one holdout decides
    metrics = {"auc_click": 0.80, "baseline_auc_click": 0.70, "baseline_of": float(v1)}
    v2 = registry.register(_bundle(tmp_path / "b2", 0.80), metrics, {})
    result = registry.promote(v2)
    assert result.passed and "challenger's holdout" in result.reason


def test_bad_requests_are_clear_errors(settings: Settings, tmp_path: Path) -> None:
    registry = Registry(settings)
    with pytest.raises(RegistryError, match="not a bundle"):
        registry.register(tmp_path, {}, {})
    with pytest.raises(RegistryError, match="no version 7"):
        registry.set_alias("champion", "7")
    with pytest.raises(RegistryError, match="no challenger"):
        registry.promote()


def test_two_threads_fetching_one_version_both_get_it(settings: Settings, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    registry = Registry(settings)
    version = registry.register(_bundle(tmp_path / "b", 0.7), {"auc_click": 0.7}, {})
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: registry.fetch(version), range(4)))
    assert len(set(folders)) == 1 and (folders[0] / "bundle.json").exists()
    assert not list(folders[0].parent.glob("*.partial"))


def test_a_forked_api_process_reads_the_registry_and_leaves_the_parents_connections(
    settings: Settings, tmp_path: Path
) -> None:
    """``recstack serve --processes N`` loads the champion, then forks: each process polls the
    registry on its own connections (the engines it inherited are disposed, not shared)."""
    from recstack.serving.prefork import after_fork_in_child

    registry = Registry(settings)
    v1 = registry.register(_bundle(tmp_path / "b1", 0.70), {"auc_click": 0.70}, {})
    assert registry.promote(v1).passed
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery past this point, only os._exit
        status = 1
        try:
            after_fork_in_child()
            os.write(write, str(registry.alias("champion")).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.read(read, 100).decode() == v1
    os.close(read)
    v2 = registry.register(_bundle(tmp_path / "b2", 0.75), {"auc_click": 0.75}, {})
    assert registry.promote(v2).passed and registry.alias("champion") == v2  # the parent's still work
