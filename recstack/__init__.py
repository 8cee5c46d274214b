"""recstack: a complete multi-stage recommender system, from event log to served feed."""

__version__ = "0.1.0"
