"""Serving operators: one stage of the funnel each, ``__call__(request, candidates) -> candidates``.

A stage receives the candidates the previous one left (columnar: item indices, scores, the source
of each, and per-stage columns such as task probabilities) and returns the subset, order and scores
it decides. ``critical`` stages (safety filtering) fail the request when they fail; any other stage
that raises is skipped: the graph passes its input through and logs a warning (see graph.py).
"""

from recstack.serving.ops.base import Candidates, Operator, RecRequest

__all__ = ["Candidates", "Operator", "RecRequest"]
