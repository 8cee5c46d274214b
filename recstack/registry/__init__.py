"""The model registry: MLflow (SQLite by default, PostgreSQL when DATABASE_URL is set)."""

from recstack.registry.mlflow_registry import GateResult, Registry

__all__ = ["GateResult", "Registry"]
