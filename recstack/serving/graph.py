"""The serving graph: the operators in funnel order, built from config and the served bundle and
checked before the first request.

retrieve -> filter -> light_rank -> heavy_rank -> value -> rerank -> explore

``Pipeline.run`` times every stage and counts what it leaves; a stage that raises is skipped (its
input passes through) and named in ``degraded``, except a critical one (the safety filter), whose
failure fails the request. ``build_pipeline`` raises ConfigError for a graph that cannot serve
(a configured source that was not built, value weights that name no task) before any request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from recstack.config import Settings, SourceKind
from recstack.errors import ConfigError, RecstackError
from recstack.features.feed import ColumnarEncoder
from recstack.index.sources import Source, build_sources
from recstack.servables.bundle import ServingBundle
from recstack.servables.ranker import OnnxRanker, PerTaskRanker, position_value
from recstack.serving.ops.base import Candidates, Operator, RecRequest
from recstack.serving.ops.explore import ExploreOp
from recstack.serving.ops.filter import FilterOp, always
from recstack.serving.ops.rank import HeavyRankOp, LightRankOp
from recstack.serving.ops.rerank import RerankOp
from recstack.serving.ops.retrieve import (
    BundleItemToItem,
    BundleMF,
    BundleNeighbours,
    BundlePopularity,
    BundleTwoTower,
    RetrieveOp,
    StateFresh,
    StateTrending,
)
from recstack.serving.ops.value import ValueOp
from recstack.serving.state import FeedState

log = logging.getLogger(__name__)

STAGES = ("retrieve", "filter", "light_rank", "heavy_rank", "value", "rerank", "explore")


class StageFailed(RecstackError):
    """A critical stage failed; the request cannot be served safely."""


@dataclass
class Outcome:
    candidates: Candidates
    timings_ms: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)


class Alignment:
    """Maps between the bundle's item order and the catalog's, extended as the catalog grows."""

    def __init__(self, bundle: ServingBundle, state: FeedState) -> None:
        self.bundle = bundle
        self.catalog_of = np.full(len(bundle.retriever.item_ids), -1, dtype=np.int64)
        self.bundle_of = np.zeros(0, dtype=np.int64)
        self.refresh(state)

    def refresh(self, state: FeedState) -> np.ndarray:
        start = len(self.bundle_of)
        if state.n_items > start:
            index = self.bundle.retriever.item_index
            new = np.array([index.get(i, -1) for i in state.item_ids[start:]], dtype=np.int64)
            self.bundle_of = np.concatenate([self.bundle_of, new])
            known = np.flatnonzero(new >= 0)
            self.catalog_of[new[known]] = start + known
        return self.bundle_of


class Pipeline:
    def __init__(self, stages: Sequence[Operator], alignment: Alignment, bundle: ServingBundle) -> None:
        self.stages = list(stages)
        self.alignment = alignment
        self.bundle = bundle

    def run(self, request: RecRequest, state: FeedState) -> Outcome:
        request.cache["bundle_of"] = self.alignment.refresh(state)
        outcome = Outcome(Candidates.empty())
        candidates = outcome.candidates
        for stage in self.stages:
            started = time.perf_counter()
            try:
                candidates = stage(request, candidates, state)
            except Exception as exc:
                if stage.critical:
                    raise StageFailed(f"stage '{stage.name}' failed: {exc}") from exc
                log.warning("stage %s failed, passing its input through: %s", stage.name, exc)
                outcome.degraded.append(stage.name)
            outcome.timings_ms[stage.name] = (time.perf_counter() - started) * 1e3
            outcome.sizes[stage.name] = len(candidates)
            if stage.name == "retrieve" and len(candidates):  # candidates per source (monitoring)
                sources, counts = np.unique(candidates.sources.astype(str), return_counts=True)
                for source, count in zip(sources.tolist(), counts.tolist(), strict=True):
                    outcome.sizes[f"retrieve.{source}"] = count
        if len(candidates) > request.n:
            candidates = candidates.take(np.arange(request.n))
        outcome.candidates = candidates
        return outcome


def build_pipeline(
    settings: Settings,
    bundle: ServingBundle,
    state: FeedState,
    hold_unscored: Callable[[], bool] = always,
    extra_sources: dict[SourceKind, Source] | None = None,
) -> Pipeline:
    cfg, r = settings.serving, settings.retrieval
    alignment = Alignment(bundle, state)
    bundle.retriever.index.tune(ef_search=r.ef_search)
    fresh = StateFresh(state, r.fresh_window_s)
    available: dict[SourceKind, Source] = {
        SourceKind.two_tower: BundleTwoTower(bundle.retriever, alignment.catalog_of, state),
        SourceKind.item_to_item: BundleItemToItem(bundle, alignment, state, r.recent),
        SourceKind.trending: StateTrending(state),
        SourceKind.fresh: fresh,
    }
    bundled = bundle.sources
    for name, weights in bundled.neighbours.items():
        available[SourceKind(name)] = BundleNeighbours(name, weights, alignment, r.recent)
    if bundled.mf is not None:
        available[SourceKind.mf] = BundleMF(bundled.mf, alignment, r.recent)
    if bundled.popularity is not None:
        available[SourceKind.popularity] = BundlePopularity(bundled.popularity, alignment, state)
    available.update(extra_sources or {})
    sources = build_sources(r, available)
    safety = FilterOp(hold_unscored)
    s = settings.safety
    try:
        value = ValueOp(bundle, cfg.value_weights, s.review_penalty, s.creator_penalty, s.creator_prior_items)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    kept = {f.name: f for f in state.features.features}
    lacking = [f.name for f in bundle.features if kept.get(f.name) != f]
    if lacking:
        raise ConfigError(
            f"the bundle's rankers read features {lacking} that the live state does not keep as it was "
            f"trained with them ([[features]] keeps {sorted(kept)}): restore those definitions or "
            "retrain (recstack train)"
        )

    def encoder_of(ranker: OnnxRanker | PerTaskRanker) -> ColumnarEncoder:
        position = position_value(ranker.meta)
        constants = {ranker.meta["position"]: position} if position is not None else None
        return ColumnarEncoder(ranker.encoder, constants)

    heavy_encoder = encoder_of(bundle.heavy)
    light_encoder = encoder_of(bundle.light) if bundle.light is not None else None
    with state.lock:
        heavy_encoder.refresh(state.item_ids)
        if light_encoder is not None:
            light_encoder.refresh(state.item_ids)
    stages: list[Operator] = [
        RetrieveOp(sources, bundle),
        safety,
        LightRankOp(bundle, light_encoder, cfg.light_keep),
        HeavyRankOp(bundle, heavy_encoder),
        value,
        RerankOp(bundle, cfg.diversity, cfg.diversity_lambda, cfg.creator_gap),
        ExploreOp(
            cfg.explore_slots,
            fresh,
            safety,
            cfg.creator_gap,
            allocator=cfg.explore_allocator,
            epsilon=cfg.explore_epsilon,
            draws=cfg.explore_propensity_draws,
        ),
    ]
    if not cfg.rank:  # a baseline: the sources' merged order, filtered, with exploration
        stages = [stages[0], stages[1], stages[-1]]
    return Pipeline(stages, alignment, bundle)
