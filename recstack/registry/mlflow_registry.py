"""Feed bundles in the MLflow model registry: versions with lineage, aliases ``champion`` and
``challenger``, a promotion gate, promote and roll back.

Each registered version is an MLflow run (params: lineage; metrics: holdout metrics; artifacts: the
bundle folder) and a model version whose source is that folder, tagged with the same lineage. The
registry URI is ``[registry] uri`` (DATABASE_URL sets it), else the tracking store (SQLite under
the state dir); artifacts live under ``<state_dir>/registry-artifacts`` unless the experiment
already names a location.

The gate: a challenger replaces the champion when its holdout ``[registry] gate_metric`` beats the
champion's by at least ``gate_margin``. When the challenger was trained incrementally its report
holds the champion's score on the challenger's own holdout (``baseline_<metric>``), and the gate
compares on that same holdout; otherwise each version's own holdout is used. Every promotion is
recorded in the registered model's ``champion_history`` tag, which ``rollback`` walks back.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recstack.config import Settings
from recstack.errors import RecstackError

log = logging.getLogger(__name__)

EXPERIMENT = "recstack-registry"
ALIAS_LOG_KEPT = 50


class RegistryError(RecstackError):
    """The registry refused an operation (no such version, gate failed, nothing to roll back to)."""


@dataclass(frozen=True)
class GateResult:
    passed: bool
    metric: str
    challenger: float | None
    champion: float | None
    margin: float
    reason: str


class Registry:
    """Versions, aliases and the promotion gate of one registered model: the feed bundle
    (``[registry] model_name``), or another one by ``name`` with its own ``gate_metric`` (the
    safety classifier)."""

    def __init__(self, settings: Settings, name: str | None = None, gate_metric: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.settings = settings
        self.name = name or settings.registry.model_name
        self.gate_metric = gate_metric or settings.registry.gate_metric
        self.uri = settings.registry_uri()
        for scheme in ("postgresql://", "postgres://"):  # SQLAlchemy's default driver is not installed
            if self.uri.startswith(scheme):
                self.uri = "postgresql+psycopg2://" + self.uri[len(scheme) :]
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.cache = (settings.paths.state_dir / "served").resolve()
        self._experiment_id: str | None = None

    # ------------------------------------------------------------------ helpers
    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                self._experiment_id = str(found.experiment_id)
            else:
                location = (self.settings.paths.state_dir / "registry-artifacts").resolve()
                location.mkdir(parents=True, exist_ok=True)
                self._experiment_id = str(
                    self.client.create_experiment(EXPERIMENT, artifact_location=location.as_uri())
                )
        return self._experiment_id

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description=f"recstack: {self.name}")

    def _history(self) -> list[str]:
        model = self.client.get_registered_model(self.name)
        return list(json.loads(model.tags.get("champion_history", "[]")))

    def _set_history(self, history: list[str]) -> None:
        self.client.set_registered_model_tag(self.name, "champion_history", json.dumps(history))

    def _note(self, action: str, version: str, reason: str) -> None:
        """Append to the ``alias_log`` tag (the last ``ALIAS_LOG_KEPT`` promotions and rollbacks,
        with their times: the report's registry history)."""
        from datetime import UTC, datetime

        entries = self.alias_log()
        entries.append(
            {"at": datetime.now(UTC).isoformat(), "action": action, "version": version, "reason": reason}
        )
        text = json.dumps(entries[-ALIAS_LOG_KEPT:])
        while len(text) > 5000 and len(entries) > 1:  # MLflow's tag value limit
            entries = entries[1:]
            text = json.dumps(entries[-ALIAS_LOG_KEPT:])
        self.client.set_registered_model_tag(self.name, "alias_log", text)

    def alias_log(self) -> list[dict[str, str]]:
        """The promotions and rollbacks recorded, oldest first (``at``, ``action``, ``version``,
        ``reason``)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException:
            return []
        return list(json.loads(model.tags.get("alias_log", "[]")))

    # ------------------------------------------------------------------ writes
    def register(self, folder: Path, metrics: dict[str, float], lineage: dict[str, Any]) -> str:
        """Log ``folder`` (a bundle) as a new version; returns the version number as a string."""
        folder = Path(folder)
        if not (folder / "bundle.json").exists():
            raise RegistryError(f"{folder} is not a bundle (no bundle.json)")
        run = self.client.create_run(self._experiment(), run_name="feed_bundle")
        run_id = run.info.run_id
        flat = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in lineage.items()}
        for key, value in flat.items():
            self.client.log_param(run_id, key, value[:6000])
        for name, number in metrics.items():
            self.client.log_metric(run_id, name, float(number))
        self.client.log_artifacts(run_id, str(folder), artifact_path="bundle")
        self.client.set_terminated(run_id)
        self._ensure_model()
        tags = {k: v[:5000] for k, v in flat.items()} | {"metrics": json.dumps(metrics)}
        version = self.client.create_model_version(
            self.name, source=f"{run.info.artifact_uri}/bundle", run_id=run_id, tags=tags
        )
        return str(version.version)

    def set_alias(self, alias: str, version: str) -> None:
        self._version(version)
        self.client.set_registered_model_alias(self.name, alias, version)

    def gate(self, challenger: str, champion: str | None) -> GateResult:
        cfg = self.settings.registry
        metric = self.gate_metric
        mine = self.metrics(challenger)
        if champion is None:
            return GateResult(True, metric, mine.get(metric), None, cfg.gate_margin, "no champion yet")
        theirs = mine.get(f"baseline_{metric}")
        where = "on the challenger's holdout"
        if theirs is None or mine.get("baseline_of") != float(champion):
            theirs, where = self.metrics(champion).get(metric), "on each version's own holdout"
        ours = mine.get(metric)
        if ours is None or theirs is None:
            return GateResult(False, metric, ours, theirs, cfg.gate_margin, f"metric '{metric}' is missing")
        passed = ours >= theirs + cfg.gate_margin
        verdict = "beats" if passed else "does not beat"
        reason = f"{metric} {ours:.4f} {verdict} {theirs:.4f} + margin {cfg.gate_margin} {where}"
        return GateResult(passed, metric, ours, theirs, cfg.gate_margin, reason)

    def promote(self, version: str | None = None, force: bool = False) -> GateResult:
        """Make ``version`` (default: the challenger) the champion if it passes the gate."""
        version = version or self.alias("challenger")
        if version is None:
            raise RegistryError("no version given and no challenger to promote")
        champion = self.alias("champion")
        if champion == version:
            raise RegistryError(f"version {version} is already the champion")
        result = self.gate(version, champion)
        if not (result.passed or force):
            return result
        history = self._history()
        if champion is not None and (not history or history[-1] != champion):
            history.append(champion)
        history.append(version)
        self.client.set_registered_model_alias(self.name, "champion", version)
        self._set_history(history)
        self._note("promote", version, result.reason if result.passed else f"forced: {result.reason}")
        if self.alias("challenger") == version:
            self.client.delete_registered_model_alias(self.name, "challenger")
        return result

    def rollback(self) -> str:
        """Make the previous champion the champion again; returns its version."""
        history = self._history()
        current = self.alias("champion")
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError("there is no earlier champion to roll back to")
        previous = history[-1]
        self.client.set_registered_model_alias(self.name, "champion", previous)
        self._set_history(history)
        self._note("rollback", previous, f"rolled back from {current}")
        return previous

    # ------------------------------------------------------------------ reads
    def _version(self, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"model '{self.name}' has no version {version}") from exc

    def alias(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def metrics(self, version: str) -> dict[str, float]:
        return {k: float(v) for k, v in json.loads(self._version(version).tags.get("metrics", "{}")).items()}

    def versions(self) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException:
            return []
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted(
            (
                {
                    "version": str(v.version),
                    "aliases": aliases.get(str(v.version), []),
                    "metrics": json.loads(v.tags.get("metrics", "{}")),
                    "data_start": v.tags.get("data_start"),
                    "data_end": v.tags.get("data_end"),
                }
                for v in found
            ),
            key=lambda row: int(row["version"]),
        )

    def fetch(self, version: str) -> Path:
        """The version's bundle as a local folder (downloaded once into the state dir)."""
        import mlflow.artifacts

        target = self.cache / self.name / str(version)
        if (target / "bundle.json").exists():
            return target
        source = self._version(version).source
        target.parent.mkdir(parents=True, exist_ok=True)
        # a private download folder, renamed into place: two threads fetching the same version
        # (the API's reload watcher and a training round, say) do not collide
        tmp = Path(tempfile.mkdtemp(prefix=f"{version}.", suffix=".partial", dir=target.parent))
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))
            if not (target / "bundle.json").exists():
                shutil.rmtree(target, ignore_errors=True)
                path.rename(target)  # the bundle folder inside tmp
        except OSError:
            if not (target / "bundle.json").exists():  # not a lost race: a real failure
                raise
        except Exception as exc:  # MLflow raises several types for missing artifacts
            raise RegistryError(f"cannot download version {version} from {source}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
