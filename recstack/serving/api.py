"""The online API (FastAPI): events in, feeds out, everything measured.

Routes (all but health, metrics and the OpenAPI documents need an ``X-API-Key`` header holding one
of ``[serving] api_keys``; the default key ``recstack-local`` is for local use):

- ``POST /v1/events``: a batch of events (JSON array, or ``{"events": [...]}``); answers how many were
  accepted, how many were duplicates, and each rejected event's index and reason. Idempotent by
  event id. 503 when the bus is down (nothing of that batch was accepted).
- ``POST /v1/items`` / ``POST /v1/users``: upserts (each becomes an item / user event).
- ``GET|POST /v1/recommend``: user_id, n, surface, context -> items with score, source and position,
  a request id, the model version and a ``degraded`` flag. The served list is logged as impressions
  (request id, positions, model version, the ranker's feature values).
- ``GET /v1/items/{item_id}/similar``: nearest items by the item tower.
- ``/health/live``, ``/health/ready``, ``/metrics`` (Prometheus).
- Gorse-compatible: ``POST /api/feedback``, ``GET /api/recommend/{user_id}``.

:class:`Runtime` holds what the routes share: the live state, the pipeline of the current champion
(swapped whole on reload, so requests in flight finish on the old one), the bus, and the background
threads (impression flusher, in-process worker, champion watcher, state sync).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import gc
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import parse_qsl

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from starlette.routing import Match

from recstack.autocomplete.normalize import normalize_prefix
from recstack.autocomplete.service import Autocomplete
from recstack.autocomplete.sync import Follower
from recstack.config import RetrievalConfig, ScoreItems, ServingConfig, Settings
from recstack.errors import BackendUnavailableError, ConfigError, RecstackError
from recstack.events.base import EventLog
from recstack.experiments.assignment import Assigner, Variant
from recstack.features.feed import logged_values
from recstack.features.stores import KVStore
from recstack.index.sources import US
from recstack.servables.bundle import ServingBundle

if TYPE_CHECKING:
    from recstack.safety.model import SafetyModel
from recstack.serving.graph import STAGES, Pipeline, StageFailed, build_pipeline
from recstack.serving.impressions import ImpressionBuffer
from recstack.serving.interleave import interleave
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.ops.rank import served_features
from recstack.serving.state import FeedState
from recstack.serving.worker import FeedWorker, Position, item_key, keeps_features, state_store, sync_state

log = logging.getLogger(__name__)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

MAX_BATCH = 10_000
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "recstack_request_seconds", "Request latency", ["endpoint"], registry=r, buckets=LATENCY_BUCKETS
        )
        self.stage = Histogram(
            "recstack_stage_seconds", "Serving stage latency", ["stage"], registry=r, buckets=LATENCY_BUCKETS
        )
        self.candidates = Histogram(
            "recstack_stage_candidates",
            "Candidates a stage leaves",
            ["stage"],
            registry=r,
            buckets=(0, 5, 10, 20, 50, 100, 200, 500, 1000),
        )
        self.responses = Counter(
            "recstack_responses",
            "Responses by route template (never the raw path) and status code",
            ["route", "status"],
            registry=r,
        )
        self.degraded = Counter(
            "recstack_degraded_stages", "Stages skipped after a failure", ["stage"], registry=r
        )
        self.events = Counter("recstack_events", "Events by outcome", ["outcome"], registry=r)
        self.reloads = Counter(
            "recstack_model_reloads", "Champion reloads by outcome", ["outcome"], registry=r
        )
        self.items = Gauge(
            "recstack_catalog_items", "Items in the catalog", registry=r, multiprocess_mode="livemax"
        )
        self.moderated = Gauge(
            "recstack_catalog_moderation",
            "Items of the catalog by moderation (allow, review, block; unscored: text no model scored)",
            ["decision"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.moderation = Counter(
            "recstack_item_moderation",
            "Item upserts scored at ingest, and batches that passed unscored because scoring failed",
            ["outcome"],
            registry=r,
        )
        # the labelled children the hot path observes, looked up once
        self.stage_of = {s: self.stage.labels(s) for s in STAGES}
        self.candidates_of = {s: self.candidates.labels(s) for s in STAGES}
        self.recommend_latency = self.latency.labels("/v1/recommend")

    def collected(self) -> CollectorRegistry:
        """What /metrics reports: this process's metrics, or with several API processes
        (PROMETHEUS_MULTIPROC_DIR set, ``serving/prefork.py``) all of theirs."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged

    def observe_stage(self, stage: str, seconds: float, size: int) -> None:
        child = self.stage_of.get(stage)
        if child is None:  # a stage outside the standard graph
            child = self.stage_of[stage] = self.stage.labels(stage)
            self.candidates_of[stage] = self.candidates.labels(stage)
        child.observe(seconds)
        self.candidates_of[stage].observe(size)


class Runtime:
    """What the API serves from. ``bundle_source`` returns (version, folder) of the model to serve
    (the registry's champion by default); ``reload()`` loads it if it changed."""

    def __init__(
        self,
        settings: Settings,
        bus: EventLog,
        state: FeedState | None = None,
        store: KVStore | None = None,
        bundle_source: Callable[[], tuple[str, Path] | None] | None = None,
        in_process_worker: bool = True,
        safety_source: Callable[[], tuple[str, Path] | None] | None = None,
        model_source: Callable[[str], tuple[str, Path]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock  # the serving time of requests and upserts (a simulation drives its own)
        self.model_source = model_source  # (version, folder) of a registered version or alias
        self.assigner = Assigner(settings.experiments)
        self.variants: dict[Variant, Pipeline] = {}  # each experiment arm's pipeline, side by side
        self.bus = bus
        cfg = settings.serving
        self.store = store if store is not None else state_store(settings)
        restored = sync_state(self.store) if state is None else None
        if restored is not None and not keeps_features(restored[0], settings):
            restored = None
        self.state = state or (restored[0] if restored else None) or FeedState.for_settings(settings)
        # where the state stands in the separate worker's chain of snapshots
        self.synced: Position | None = restored[1] if restored else None
        self.metrics = Metrics()
        self.bundle_source = bundle_source
        self.safety_source = safety_source
        self.safety: tuple[str, SafetyModel] | None = None  # (version, model) of the served classifier
        self.safety_error: str | None = None
        self.safety_checked = -math.inf
        self.safety_registered = False  # a safety champion exists (it may still fail to load)
        self.pipeline: Pipeline | None = None
        self.version: str | None = None
        self.worker = (
            FeedWorker(
                bus,
                self.state,
                self.store,
                snapshot_s=cfg.checkpoint_s,
                full_s=cfg.checkpoint_full_s,
                resume=self.synced,
                window=settings.event_log.window(),
            )
            if in_process_worker
            else None
        )
        self.impressions = ImpressionBuffer()
        self.autocomplete = Autocomplete(settings.autocomplete, self.moderate_suggestions)
        # the embedded worker counts the queries here; a separate one publishes them (autocomplete/sync.py)
        self.autocomplete_follower = Follower(self.store, self.autocomplete) if self.worker is None else None
        if self.worker is not None:
            self.worker.listeners.append(self.autocomplete.observe_events)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.bus_ok = True
        self.rng = np.random.default_rng()
        self.reload_error: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once the app runs
        self.loop_thread: int | None = None
        if self.worker is not None:
            self.worker.capture_on = self.on_serving_thread

    def on_serving_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the serving loop between requests (and wait for it): a snapshot's copy of
        the state takes a few milliseconds there, where from another thread it would take tens,
        sharing the GIL with serving while holding the state lock that serving waits for. Runs
        ``fn`` here when no loop is serving (tests, shutdown) or this is the loop's thread."""
        loop = self.loop
        if loop is None or not loop.is_running() or self.loop_thread == threading.get_ident():
            return fn()

        async def call() -> T:
            return fn()

        try:
            future = asyncio.run_coroutine_threadsafe(call(), loop)
        except RuntimeError:  # the loop closed meanwhile
            return fn()
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if not loop.is_running() and future.cancel():  # stopped before running it
                    return fn()

    # ------------------------------------------------------------------ models
    def serve_bundle(self, folder: Path, version: str) -> None:
        """Load and check a bundle, build its pipeline, then swap it in. On any failure the current
        pipeline keeps serving and CheckpointError (or ConfigError) is raised."""
        bundle = ServingBundle.load(folder)
        bundle.meta["version"] = version
        with self.state.lock:
            pipeline = build_pipeline(self.settings, bundle, self.state, self.hold_unscored)
        variants = self.build_variants(bundle, pipeline)
        # one assignment each: requests see old or new
        self.pipeline, self.variants, self.version = pipeline, variants, version
        freeze_heap()
        log.info("serving model version %s from %s", version, folder)

    def build_variants(self, champion: ServingBundle, base: Pipeline) -> dict[Variant, Pipeline]:
        """One pipeline per experiment variant: the base settings with the variant's [serving] and
        [retrieval] keys overridden, on the champion or the model version the arm names. Raises
        ConfigError (the champion keeps serving) for an arm whose model is not registered or whose
        settings cannot serve."""
        out: dict[Variant, Pipeline] = {}
        bundles: dict[str, ServingBundle] = {}
        for variant in self.assigner.variants():
            model, serving, retrieval = self.assigner.overrides(variant)
            if model is None and not serving and not retrieval:
                out[variant] = base
                continue
            bundle = champion
            if model is not None:
                if model not in bundles:
                    bundles[model] = self.load_version(model)
                bundle = bundles[model]
            try:
                settings = self.settings.model_copy(
                    update={
                        "serving": ServingConfig.model_validate(self.settings.serving.model_dump() | serving),
                        "retrieval": RetrievalConfig.model_validate(
                            self.settings.retrieval.model_dump() | retrieval
                        ),
                    }
                )
            except ValidationError as exc:
                raise ConfigError(f"experiment variant {variant.label}: invalid settings: {exc}") from exc
            with self.state.lock:
                out[variant] = build_pipeline(settings, bundle, self.state, self.hold_unscored)
        return out

    def load_version(self, model: str) -> ServingBundle:
        if self.model_source is None:
            raise ConfigError(
                f"an experiment arm names model {model!r}, but this API has no registry to load it"
            )
        try:
            version, folder = self.model_source(model)
        except RecstackError as exc:
            raise ConfigError(f"an experiment arm names model {model!r}: {exc}") from exc
        bundle = ServingBundle.load(folder)
        bundle.meta["version"] = version
        return bundle

    def pipeline_for(self, user_id: str | None) -> tuple[Pipeline | None, Variant]:
        """The pipeline serving ``user_id`` and its variant (anonymous requests: the base one)."""
        if user_id is None or not self.assigner.active:
            return self.pipeline, Variant()
        variant = self.assigner.assign(user_id)
        return self.variants.get(variant, self.pipeline), variant

    def reload(self) -> bool:
        """Serve the source's current version if it changed; True when a new one was swapped in."""
        if self.bundle_source is None:
            return False
        try:
            found = self.bundle_source()
            if found is None or found[0] == self.version:
                return False
            self.serve_bundle(found[1], found[0])
        except RecstackError as exc:
            self.reload_error = str(exc)
            self.metrics.reloads.labels("refused").inc()
            log.error("model reload refused, version %s keeps serving: %s", self.version, exc)
            return False
        self.reload_error = None
        self.metrics.reloads.labels("loaded").inc()
        return True

    # ------------------------------------------------------------------ background
    def flush_impressions(self) -> int:
        table = self.impressions.take()
        if table is None:
            return 0
        try:
            self.bus.append_table(table)  # validated column-wise by the log
            self.bus_ok = True
        except BackendUnavailableError as exc:
            self.bus_ok = False
            self.impressions.give_back(table)  # kept (bounded) for the next try
            log.warning("impressions kept in memory, the bus is down: %s", exc)
            return 0
        return int(table.num_rows)

    def _loop(self, every_s: float, fn: Callable[[], Any]) -> None:
        while not self.stop.wait(every_s):
            try:
                fn()
            except Exception as exc:  # a background task must not die; it logs and tries again
                log.error("background task %s failed: %s", getattr(fn, "__name__", fn), exc)

    def check_safety(self) -> None:
        """Look up the safety classifier's champion and load it when it changed (the background
        loop calls this every ``reload_s``; a lookup that fails keeps what was known)."""
        from recstack.safety.model import SafetyModel

        self.safety_checked = time.monotonic()
        if self.safety_source is None:
            return
        try:
            found = self.safety_source()
        except Exception as exc:  # the registry is unreachable: the last answer stands
            log.warning("safety model lookup failed: %s", exc)
            return
        self.safety_registered = found is not None
        if found is None:
            self.safety_error = "no safety model: run recstack safety train"
            return
        if self.safety is not None and found[0] == self.safety[0]:
            return
        try:
            self.safety = (found[0], SafetyModel.load(found[1]))
            self.safety_error = None
        except RecstackError as exc:
            self.safety_error = f"the safety model {found[0]} could not be loaded: {exc}"
            log.error("%s", self.safety_error)

    def safety_model(self) -> tuple[str, SafetyModel]:
        """The safety classifier's champion (looked up at most every ``reload_s``); RecstackError
        saying why when there is none or it cannot be loaded. A new champion that cannot be loaded
        leaves the last one loaded scoring (``safety_error`` says why)."""
        if time.monotonic() - self.safety_checked >= self.settings.serving.reload_s:
            self.check_safety()
        if self.safety is None:
            raise BackendUnavailableError(self.safety_error or "no safety model: run recstack safety train")
        return self.safety

    def moderate_suggestions(self, texts: list[str]) -> list[bool]:
        """Which suggestions the safety model allows (review and block are both dropped); every one
        while no safety model is registered; BackendUnavailableError when one is and cannot score."""
        if not self.hold_unscored():
            return [True] * len(texts)
        _, model = self.safety_model()
        return [m.decision == "allow" for m in model.moderate(texts, self.settings.safety.max_chars)]

    def safety_status(self) -> dict[str, Any]:
        """The moderation of the catalog for /health/ready: the model, items by decision, and why
        unscored items are held back or served."""
        counts = self.state.safety_counts()
        held = self.hold_unscored()
        if not counts["unscored"]:
            note = None
        elif held:
            why = self.safety_error or "they were ingested before the model, or scoring failed"
            note = f"{counts['unscored']} items with text are held back unscored ({why}): "
            note += "recstack safety rescore"
        else:
            note = f"{counts['unscored']} items with text are served unscored: no safety model "
            note += "(recstack safety train)"
        return {
            "model_version": self.safety[0] if self.safety is not None else None,
            "error": self.safety_error if self.safety_registered else None,
            "items": counts,
            "unscored_held_back": held,
            "note": note,
        }

    def hold_unscored(self) -> bool:
        """Whether items with text that no model scored are held back: under ``[safety] score_items``
        auto while a safety model is registered (loaded or not), always under required."""
        mode = self.settings.safety.score_items
        return mode is ScoreItems.required or (mode is ScoreItems.auto and self.safety_registered)

    def score_items(self, records: list[Any]) -> None:
        """Moderate the item upserts among ``records`` in place before they are appended (see
        recstack/safety/items.py). With no model they pass unscored; when the model fails they pass
        unscored too, and the feed holds them back (nothing accepted is lost)."""
        from recstack.safety.items import scorer_for, strip_decisions

        cfg = self.settings.safety
        if not any(isinstance(r, dict) and r.get("kind") == "item" for r in records):
            return
        strip_decisions(records)
        if cfg.score_items is ScoreItems.off:
            return
        try:
            version, model = self.safety_model()
        except BackendUnavailableError as exc:
            if self.safety_registered:
                self.metrics.moderation.labels("failed").inc()
                log.error("item upserts pass unscored and are held back: %s", exc)
            return
        scorer = scorer_for(self.settings, version, model)
        try:
            scored = scorer.score_records(records)
        except Exception as exc:  # a model that loads but fails: held back, never served unchecked
            self.metrics.moderation.labels("failed").inc()
            log.error("item upserts pass unscored and are held back, scoring failed: %s", exc)
            return
        self.metrics.moderation.labels("scored").inc(scored)

    def item_records(self, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The latest upsert of each item (item id -> record) as the worker keeps it: written with its
        snapshots to the state store, and in the embedded default also those it has not written yet."""
        out: dict[str, dict[str, Any]] = {}
        pending = self.worker.items if self.worker is not None else {}
        missing = []
        for item_id in item_ids:
            upsert = pending.get(item_id)
            if upsert is not None:
                out[item_id] = json.loads(upsert.model_dump_json())
            else:
                missing.append(item_id)
        if missing:
            keys = [item_key(i) for i in missing]
            for item_id, raw in zip(missing, self.store.get_many(keys), strict=True):
                if raw is not None:
                    out[item_id] = json.loads(raw)
        return out

    def waiting_for(self) -> list[str]:
        """Why the API is not ready to serve yet (empty: ready): a model, a catalog, and the feed
        state caught up with the log (the in-process worker read to its end once) or loaded from a
        separate worker's snapshot. Before that, feeds would repeat what users already saw."""
        waiting = []
        if self.pipeline is None:
            waiting.append("no model is served yet (recstack train --feed, recstack promote)")
        if self.worker is not None:
            if not self.worker.caught_up.is_set():
                waiting.append(
                    f"the worker is reading the event log ({self.worker.delivered:,} events so far)"
                )
        elif self.synced is None:
            waiting.append("no state snapshot from a worker yet (is `recstack worker` running?)")
        if self.state.n_items == 0:
            waiting.append("the catalog is empty (recstack import --items, or POST /v1/items)")
        return waiting

    def _sync_state(self) -> None:
        """A separate worker owns the state: apply its deltas since the last sync in place, or take
        over its whole snapshot when it started a new chain (the catalog, tens of MB at 1M items,
        is fetched and decoded only when it changed; the same catalog's columns, and the users
        whose lists did not change, are kept). See worker.py."""
        catalog_version = self.state.catalog_version
        synced = sync_state(self.store, self.state, self.synced)
        if synced is None:
            return
        fresh, self.synced = synced
        if fresh is not self.state:
            self.state.update_from(fresh)
            if fresh.catalog_version != catalog_version:
                freeze_heap()  # a new catalog: millions of references the collector need not scan

    def start(self) -> None:
        """Load the champion and start the background work (one process)."""
        self.check_safety()
        self.reload()
        if self.worker is None:  # a separate worker publishes the counts
            self.sync_autocomplete()
        elif self.synced is not None:  # a resumed worker: the log's history is not replayed
            self.load_autocomplete()
        self.start_background()

    def sync_autocomplete(self) -> None:
        """Count what the separate worker published since the last sync (autocomplete/sync.py)."""
        if self.autocomplete_follower is None:
            return
        try:
            self.autocomplete_follower.sync()
        except Exception as exc:  # the store is down, or a damaged snapshot: the next sync tries again
            log.error("autocomplete could not follow the worker's counts: %s", exc)

    def load_autocomplete(self) -> None:
        """Count the log's query history into autocomplete (then freeze the heap: the counts are
        millions of objects the collector need not scan on the serving thread)."""
        try:
            self.autocomplete.load_history(self.bus)
        except Exception as exc:  # the log is unreachable: completions start from what arrives
            log.error("autocomplete could not read the query history: %s", exc)
            return
        freeze_heap()

    def after_fork(self) -> None:
        """In a process forked from one that loaded this runtime (``serving/prefork.py``): fresh
        randomness (forked copies would draw the same explore picks) and no inherited buffers."""
        self.rng = np.random.default_rng()
        self.impressions = ImpressionBuffer()
        self.stop = threading.Event()
        self.threads = []

    def start_background(self) -> None:
        """Impression flush, champion reload, and the in-process worker or the state sync."""
        cfg = self.settings.serving
        jobs: list[tuple[float, Callable[[], Any]]] = [(cfg.impression_flush_s, self.flush_impressions)]
        if self.bundle_source is not None and cfg.reload_s > 0:
            jobs.append((cfg.reload_s, self.reload))
        if self.safety_source is not None and cfg.reload_s > 0:
            jobs.append((cfg.reload_s, self.check_safety))
        rebuild_every = min(self.settings.autocomplete.rebuild_s, 5.0)
        jobs.append((rebuild_every, self.autocomplete.maybe_rebuild))
        if self.worker is None:
            jobs.append((cfg.state_sync_s, self._sync_state))
            jobs.append((cfg.state_sync_s, self.sync_autocomplete))
        for every, fn in jobs:
            thread = threading.Thread(target=self._loop, args=(every, fn), daemon=True)
            thread.start()
            self.threads.append(thread)
        if self.worker is not None:
            thread = threading.Thread(
                target=self.worker.run, args=(self.stop,), kwargs={"batch": 100}, daemon=True
            )
            thread.start()
            self.threads.append(thread)
            if self.settings.monitoring.enabled:  # the embedded worker's monitoring schedule
                from recstack.monitoring.monitor import scheduled

                thread = threading.Thread(
                    target=scheduled,
                    args=(self.settings, self.bus, self.stop),
                    kwargs={"clock": self.clock, "metrics": self.metrics.registry},
                    daemon=True,
                )
                thread.start()
                self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.flush_impressions()


# ---------------------------------------------------------------------- request and response bodies
ContextKey = Annotated[str, Field(min_length=1, max_length=64)]
ContextValue = Annotated[str, Field(max_length=256)]
Id = Annotated[str, Field(min_length=1, max_length=256)]
Stamp = Annotated[
    datetime | StrictInt | StrictFloat, Field(description="ISO-8601 with an offset, or epoch seconds.")
]


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, min_length=1, max_length=256)
    n: int | None = Field(None, ge=1)
    surface: str = Field("feed", min_length=1, max_length=64)
    context: dict[ContextKey, ContextValue] = Field(
        default_factory=dict, max_length=32, description="Request context (e.g. device); at most 32 keys."
    )
    fields: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=16,
        description="Item attributes to return with each item (`text` for its text); at most 16.",
    )


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    source: str
    position: int
    explore: bool = False
    attributes: dict[str, Any] | None = Field(
        None, description="The item's attributes the request named in `fields` (`text`: its text)."
    )


class ItemRecord(BaseModel):
    """An item as its latest upsert left it."""

    item_id: str
    creator_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    text: str | None = None
    created_at: datetime | None = None
    timestamp: datetime
    event_id: str


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str | None
    items: list[RecommendedItem]
    model_version: str | None
    experiments: dict[str, str] = Field(
        default_factory=dict, description="The user's arm in each running experiment ([experiments])."
    )
    degraded: bool
    degraded_stages: list[str] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every error but a validation error: what went wrong and what to do."""

    detail: str


class EventsEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(max_length=MAX_BATCH)


def _at_most(max_n: int, required: bool = False) -> Callable[[F], F]:
    """Give a route's ``n`` parameter its bound from config (``le=max_n``, in the OpenAPI schema
    too): set as an object, since this module's annotations are strings FastAPI resolves in its
    globals, where the settings are not."""

    kind = int if required else int | None
    query = Query(ge=1, le=max_n, description=f"Items to return, at most [serving] max_n = {max_n}.")
    return _typed(n=Annotated[kind, query])


def _typed(**annotations: Any) -> Callable[[F], F]:
    """Set a route's parameter types as objects (types made inside ``create_app`` from config)."""

    def typed(fn: F) -> F:
        fn.__annotations__.update(annotations)
        return fn

    return typed


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of the error codes a route can answer (422 is FastAPI's own)."""
    why = {
        400: "The body could not be read (not UTF-8 JSON).",
        401: "Missing or invalid X-API-Key.",
        404: "Unknown item.",
        413: "Body above [serving] max_body_bytes, or a batch above 10,000 events.",
        503: "No model served yet, or the event bus is down (nothing of the batch was accepted).",
    }
    return {code: {"model": ErrorBody, "description": why[code]} for code in codes}


class ModerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # 100 texts of 5,000 characters stay under the 8 MiB body limit even as \u escapes in JSON
    texts: list[Annotated[str, Field(max_length=5_000)]] = Field(
        min_length=1,
        max_length=100,
        description="Texts to score: at most 100 of at most 5,000 characters (scored on their first "
        "[safety] max_chars).",
    )


class Moderated(BaseModel):
    label: str = Field(description="hate, offensive or neither.")
    score: float = Field(description="The unsafe score, P(hate) + P(offensive).")
    decision: str = Field(description="block, review or allow, by the thresholds stored with the model.")
    truncated: bool = Field(description="The text was cut at [safety] max_chars before scoring.")


class ModerateResponse(BaseModel):
    model_version: str
    results: list[Moderated]


class SuggestionOut(BaseModel):
    text: str = Field(description="The completed query, normalized (NFKC, case folded).")
    score: float = Field(description="Its time-decayed count, with the personal boost for the user.")
    corrected: bool = Field(description="A completion of a one-edit variant of the prefix (a typo).")


class AutocompleteResponse(BaseModel):
    prefix: str = Field(description="The prefix as normalized.")
    suggestions: list[SuggestionOut]


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]]


class SimilarItem(BaseModel):
    item_id: str
    score: float


class SimilarResponse(BaseModel):
    item_id: str
    items: list[SimilarItem]
    model_version: str | None


class GorseFeedbackResponse(BaseModel):
    RowAffected: int
    rejected: list[dict[str, Any]]


class ItemBody(BaseModel):
    """An item upsert. ``event_id`` and ``timestamp``, when the client sends them, are kept, so a
    retried request is a duplicate rather than a second upsert."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id
    creator_id: Id | None = None
    attributes: dict[Annotated[str, Field(max_length=256)], str | int | float | bool | list[str] | None] = (
        Field(default_factory=dict, max_length=256)
    )
    text: str | None = Field(None, max_length=65_536)
    created_at: Stamp | None = None
    event_id: Id | None = None
    timestamp: Stamp | None = None


class UserBody(BaseModel):
    """A user upsert; ``event_id`` and ``timestamp`` as for items."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id
    attributes: dict[Annotated[str, Field(max_length=256)], str | int | float | bool | list[str] | None] = (
        Field(default_factory=dict, max_length=256)
    )
    event_id: Id | None = None
    timestamp: Stamp | None = None


class GorseFeedback(BaseModel):
    FeedbackType: str = Field(min_length=1, max_length=64)
    UserId: Id
    ItemId: Id
    Timestamp: str | None = Field(None, max_length=64)


GORSE_KINDS = {
    "click": "click",
    "read": "click",
    "like": "like",
    "star": "like",
    "share": "share",
    "hide": "hide",
    "report": "report",
    "comment": "comment",
}


def create_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings
    cfg = settings.serving
    keys = set(cfg.api_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.loop, runtime.loop_thread = asyncio.get_running_loop(), threading.get_ident()
        yield
        runtime.loop = runtime.loop_thread = None

    app = FeedApp(
        lifespan=lifespan,
        title="recstack",
        version="0.1.0",
        description="The multi-stage feed API: events in, ranked feeds out. Every route under /v1 and "
        "/api needs the X-API-Key header ([serving] api_keys); bodies are at most [serving] "
        "max_body_bytes, ids at most 256 characters.",
        docs_url=None,  # served below from the swagger-ui-bundle package: /docs works offline
        redoc_url=None,
    )
    app.state.runtime = runtime
    _offline_docs(app)
    _event_schemas(app)

    api_key = APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        description="One of [serving] api_keys (recstack-local by default).",
    )

    # async: a sync dependency costs a thread hop; the Gate has checked the key already, this
    # declares the scheme in the OpenAPI document (and checks again behind any other entry)
    @_typed(key=Annotated[str | None, Security(api_key)])
    async def require_key(key: str | None = None) -> None:
        if key not in keys:
            raise HTTPException(401, "missing or invalid API key (send it in the X-API-Key header)")

    secured = APIRouter(dependencies=[Depends(require_key)], responses=_errors(400, 401, 413))
    max_n = Annotated[int, Field(ge=1, le=cfg.max_n)]

    class Recommend(RecommendBody):
        """A feed request (``n`` at most ``[serving] max_n``)."""

        n: max_n | None = None

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    def error_response(path: str, exc: RecstackError) -> JSONResponse:
        del path  # counted by route template in Gate
        status = 503 if isinstance(exc, BackendUnavailableError | StageFailed) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RecstackError)
    async def _recstack(request: Request, exc: RecstackError) -> JSONResponse:
        return error_response(request.url.path, exc)

    def ingest(raw: list[Any]) -> IngestResponse:
        if len(raw) > MAX_BATCH:
            raise HTTPException(413, f"a batch holds at most {MAX_BATCH} events, this one {len(raw)}")
        runtime.score_items(raw)
        try:
            result = runtime.bus.append(raw)
        except BackendUnavailableError as exc:
            runtime.bus_ok = False
            raise BackendUnavailableError(
                f"{exc}; nothing in this batch was accepted, send it again"
            ) from exc
        runtime.bus_ok = True
        m = runtime.metrics.events
        m.labels("accepted").inc(result.accepted)
        m.labels("duplicate").inc(result.duplicates)
        m.labels("rejected").inc(len(result.rejected))
        return IngestResponse(
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=[{"index": r.index, "error": r.error} for r in result.rejected],
        )

    @secured.post("/v1/events", response_model=IngestResponse, responses=_errors(503))
    def post_events(
        body: Annotated[list[dict[str, Any]], Field(max_length=MAX_BATCH)] | EventsEnvelope,
    ) -> IngestResponse:
        """Append events (a JSON array, or ``{"events": [...]}``; at most 10,000), each an event of
        the schema in docs/event-log.md: an event that fails validation is rejected with its index
        and the reason, the others are kept. Idempotent by event id."""
        started = time.perf_counter()
        out = ingest(body.events if isinstance(body, EventsEnvelope) else body)
        runtime.metrics.latency.labels("/v1/events").observe(time.perf_counter() - started)
        return out

    def now_iso() -> str:
        return datetime.fromtimestamp(runtime.clock(), UTC).isoformat()

    def upserts(kind: str, body: list[ItemBody] | list[UserBody]) -> list[dict[str, Any]]:
        stamp = now_iso()
        out = []
        for b in body:
            fields = b.model_dump(exclude_none=True, mode="json")
            entity = fields["item_id" if kind == "item" else "user_id"]
            fields.setdefault("event_id", f"{kind}:{entity}:{uuid.uuid4().hex}")
            fields.setdefault("timestamp", stamp)
            out.append({"kind": kind, **fields})
        return out

    @secured.post("/v1/items", response_model=IngestResponse, responses=_errors(503))
    def post_items(body: list[ItemBody] | ItemBody) -> IngestResponse:
        """Upsert items: a JSON array, or one object."""
        return ingest(upserts("item", body if isinstance(body, list) else [body]))

    @secured.post("/v1/users", response_model=IngestResponse, responses=_errors(503))
    def post_users(body: list[UserBody] | UserBody) -> IngestResponse:
        """Upsert users: a JSON array, or one object."""
        return ingest(upserts("user", body if isinstance(body, list) else [body]))

    def recommend(body: RecommendBody) -> dict[str, Any]:
        started = time.perf_counter()
        n = body.n or cfg.default_n
        if n > cfg.max_n:
            raise HTTPException(422, f"n = {n} is more than [serving] max_n = {cfg.max_n}")
        pipeline, variant = runtime.pipeline_for(body.user_id)
        if pipeline is None:
            detail = "no model is being served yet: train and promote one (recstack train, recstack promote)"
            if runtime.reload_error:
                detail += f"; the last load was refused: {runtime.reload_error}"
            raise HTTPException(503, detail)
        state = runtime.state
        request_id = uuid.uuid4().hex
        now_us = int(runtime.clock() * US)
        sides = runtime.assigner.sides(variant)
        labels: str | list[str | None] | None = variant.label
        with state.lock:
            user = state.user(body.user_id)

            def request_for() -> RecRequest:
                return RecRequest(
                    body.user_id,
                    n,
                    now_us,
                    body.surface,
                    body.context,
                    tuple(user.history) if user else (),
                    state.excluded(body.user_id),  # a view, read under the lock
                    rng=np.random.default_rng(runtime.rng.integers(2**63)),
                )

            request = request_for()
            if sides is None:
                outcomes = [pipeline.run(request, state)]
                served = outcomes[0].candidates
            else:  # both arms' lists on the same request, interleaved
                _, first, second = sides
                pipeline = runtime.variants[first]
                outcomes = [pipeline.run(request, state), runtime.variants[second].run(request_for(), state)]
                draft_rng = np.random.default_rng(request.rng.integers(2**63))
                served, teams = interleave(outcomes[0].candidates, outcomes[1].candidates, n, draft_rng)
                labels = [first.label if t == 0 else second.label for t in teams]  # each item's arm
            item_ids = [state.item_ids[i] for i in served.items]
            logged = _feature_rows(request, served.items, pipeline, state)
        metrics = runtime.metrics
        for ran in outcomes:
            for stage, ms in ran.timings_ms.items():
                metrics.observe_stage(stage, ms / 1e3, ran.sizes[stage])
            for stage in ran.degraded:
                runtime.metrics.degraded.labels(stage).inc()
        degraded = sorted({stage for ran in outcomes for stage in ran.degraded})
        explore = served.explore if served.explore is not None else np.zeros(len(served), dtype=bool)
        version = pipeline.bundle.version
        if body.user_id is not None:
            runtime.impressions.add(
                request_id,
                body.user_id,
                item_ids,
                now_us,
                body.surface,
                json.dumps({"feed": version}),
                json.dumps(body.context),
                logged,
                labels,
                # interleaving's coin flips are not a logging probability: such lists log none
                None if served.propensity is None else served.propensity.tolist(),
                known_propensity=sides is None,
                serving=_serving_rows(served, outcomes[0].timings_ms, outcomes[0].sizes, degraded),
            )
            # applied now, so the user's next request cannot repeat it whatever the worker's lag
            # (a separate worker's next snapshot includes the same impressions)
            state.record_served(body.user_id, served.items.tolist(), request_id, now_us)
        entries: list[dict[str, Any]] = [
            {"item_id": item, "score": score, "source": source, "position": pos, "explore": e}
            for pos, (item, score, source, e) in enumerate(
                zip(item_ids, served.scores.tolist(), served.sources, explore.tolist(), strict=True)
            )
        ]
        if body.fields:
            records = runtime.item_records(item_ids)
            wanted = set(body.fields)
            for entry in entries:
                record = records.get(entry["item_id"], {})
                values = {k: v for k, v in (record.get("attributes") or {}).items() if k in wanted}
                if "text" in wanted and record.get("text") is not None:
                    values["text"] = record["text"]
                entry["attributes"] = values
        response = {  # the RecommendResponse shape, built without model validation (hot path)
            "request_id": request_id,
            "user_id": body.user_id,
            "items": entries,
            "model_version": version,
            "experiments": dict(variant.arms) if not variant.holdout else {"holdout": "holdout"},
            "degraded": bool(degraded) or not runtime.bus_ok,
            "degraded_stages": degraded,
        }
        metrics.recommend_latency.observe(time.perf_counter() - started)
        return response

    # async: the funnel runs on the event loop (a few ms of CPU, serialized by the state lock
    # anyway), sparing the thread-pool hop per request
    @secured.get("/v1/recommend", response_model=RecommendResponse, responses=_errors(503))
    @_at_most(cfg.max_n)
    async def get_recommend(
        user_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        n: Annotated[int | None, Query(ge=1)] = None,
        surface: Annotated[str, Query(min_length=1, max_length=64)] = "feed",
        fields: Annotated[
            str | None,
            Query(
                pattern=r"^[^,]{0,64}(,[^,]{0,64}){0,15}$",
                description="Comma-separated item attributes to return with each item (`text`: its text); "
                "at most 16 names of at most 64 characters.",
            ),
        ] = None,
    ) -> JSONResponse:
        names = [f.strip() for f in fields.split(",") if f.strip()] if fields else []
        try:
            body = RecommendBody(user_id=user_id, n=n, surface=surface, fields=names)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        return JSONResponse(recommend(body))

    @secured.post("/v1/moderate", response_model=ModerateResponse, responses=_errors(503))
    def moderate(body: ModerateBody) -> dict[str, Any]:
        """Score texts with the safety classifier's champion: label, unsafe score and the decision."""
        version, model = runtime.safety_model()
        results = model.moderate(body.texts, settings.safety.max_chars)
        return {"model_version": version, "results": [vars(r) for r in results]}

    ac = settings.autocomplete

    @secured.get("/v1/autocomplete", response_model=AutocompleteResponse, responses=_errors(503))
    @_typed(
        q=Annotated[str, Query(max_length=ac.max_chars, description="What the user typed so far.")],
        n=Annotated[int | None, Query(ge=1, le=ac.max_n, description="Completions wanted.")],
        user_id=Annotated[str | None, Query(min_length=1, max_length=256)],
        topic_boost=Annotated[
            bool, Query(description="Boost by the user's engaged topics ([autocomplete] topic_weight).")
        ],
    )
    async def autocomplete(
        q: str = "", n: int | None = None, user_id: str | None = None, topic_boost: bool = True
    ) -> dict[str, Any]:
        """Complete a search prefix: the most searched queries starting with it (counts decay with
        [autocomplete] half_life_s), the user's own past queries and engaged topics boosted,
        one-edit variants where the prefix has few completions; nothing on the block list, nothing
        the safety model does not allow (503 when a registered model cannot check them). On the
        event loop: a lookup takes tens of microseconds, less than a hop to the thread pool; a
        suggestion the safety model has not seen is scored in the thread pool."""
        suggest = runtime.autocomplete.suggest
        if runtime.hold_unscored():  # the safety model checks what it has not seen yet
            out = await run_in_threadpool(suggest, q, user_id, n, topic_boost)
        else:
            out = suggest(q, user_id, n, topic_boost)
        return {
            "prefix": normalize_prefix(q, ac.max_chars),
            "suggestions": [{"text": s.text, "score": s.score, "corrected": s.corrected} for s in out],
        }

    @secured.get("/v1/items/{item_id}", response_model=ItemRecord, responses=_errors(404))
    def get_item(item_id: Annotated[str, PathParam(min_length=1, max_length=256)]) -> dict[str, Any]:
        """The item as its latest upsert left it (as the worker has applied it)."""
        record = runtime.item_records([item_id]).get(item_id)
        if record is None:
            raise HTTPException(404, f"item '{item_id}' was never upserted")
        return record

    @secured.post("/v1/recommend", response_model=RecommendResponse, responses=_errors(503))
    @_typed(body=Recommend)
    async def post_recommend(body: RecommendBody) -> JSONResponse:
        return JSONResponse(recommend(body))

    @secured.get("/v1/items/{item_id}/similar", response_model=SimilarResponse, responses=_errors(404, 503))
    @_at_most(cfg.max_n, required=True)
    def similar(
        item_id: Annotated[str, PathParam(min_length=1, max_length=256)],
        n: Annotated[int, Query(ge=1)] = 10,
    ) -> dict[str, Any]:
        if n > cfg.max_n:
            raise HTTPException(422, f"n = {n} is more than [serving] max_n = {cfg.max_n}")
        pipeline = runtime.pipeline
        if pipeline is None:
            raise HTTPException(503, "no model is being served yet")
        bundle = pipeline.bundle
        row = bundle.retriever.item_index.get(item_id)
        if row is None:
            raise HTTPException(404, f"item '{item_id}' is not in the served model")
        scores, ids = bundle.retriever.index.search(bundle.vectors[row][None, :], n + 1)
        items = [
            {"item_id": bundle.retriever.item_ids[i], "score": float(s)}
            for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True)
            if i >= 0 and i != row
        ][:n]
        return {"item_id": item_id, "items": items, "model_version": bundle.version}

    @app.get("/health/live")
    def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready")
    def ready() -> JSONResponse:
        waiting = runtime.waiting_for()
        ok = not waiting
        body = {
            "status": "ready" if ok else "not ready",
            "waiting_for": waiting,
            "model_version": runtime.version,
            "catalog_items": runtime.state.n_items,
            "bus": "ok" if runtime.bus_ok else "unavailable",
            "reload_error": runtime.reload_error,
            "safety": runtime.safety_status(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        runtime.metrics.items.set(runtime.state.n_items)
        for decision, count in runtime.state.safety_counts().items():
            runtime.metrics.moderated.labels(decision).set(count)
        return PlainTextResponse(generate_latest(runtime.metrics.collected()), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ Gorse-compatible aliases
    @secured.post("/api/feedback", response_model=GorseFeedbackResponse, responses=_errors(503))
    def gorse_feedback(body: list[GorseFeedback]) -> dict[str, Any]:
        raw = []
        for f in body:
            kind = GORSE_KINDS.get(f.FeedbackType.lower(), f.FeedbackType.lower())
            stamp = f.Timestamp or now_iso()
            raw.append(
                {  # Gorse keeps one feedback per (type, user, item): a repeat is a duplicate here too
                    "event_id": f"gorse:{kind}:{f.UserId}:{f.ItemId}",
                    "kind": kind,
                    "timestamp": stamp,
                    "user_id": f.UserId,
                    "item_id": f.ItemId,
                }
            )
        out = ingest(raw)
        return {"RowAffected": out.accepted, "rejected": out.rejected}

    @secured.get("/api/recommend/{user_id}", responses=_errors(503))
    @_at_most(cfg.max_n, required=True)
    def gorse_recommend(
        user_id: Annotated[str, PathParam(min_length=1, max_length=256)],
        n: Annotated[int, Query(ge=1)] = 10,
    ) -> list[str]:
        return [item["item_id"] for item in recommend(RecommendBody(user_id=user_id, n=n))["items"]]

    app.include_router(secured)
    app.outermost = lambda stack: Gate(
        RecommendFastPath(
            stack,
            keys=keys,
            max_n=cfg.max_n,
            ready=lambda: runtime.pipeline is not None,
            handler=recommend,
            on_error=error_response,
        ),
        keys=keys,
        max_body=cfg.max_body_bytes,
        responses=runtime.metrics.responses,
        # the routes with their templates (the app's own list wraps included routers)
        routes=[r for r in [*secured.routes, *app.routes] if isinstance(getattr(r, "path", None), str)],
    )
    return app


class Gate:
    """The outermost layer of every request: the API key checked before any body is read (401),
    the body's size bounded (413, from Content-Length or as it streams in), and every response
    counted by route template and status code (``recstack_responses``; a raw path with ids in it
    would grow the label set without bound)."""

    PUBLIC = ("/health/", "/metrics", "/docs", "/redoc", "/openapi.json", "/static/")

    def __init__(
        self, app: Any, keys: set[str], max_body: int, responses: Counter, routes: list[Any]
    ) -> None:
        self.app = app
        self.routes = routes
        self.plain: dict[str, str] = {}  # paths that are their own template
        self.keys = {k.encode("latin-1") for k in keys}
        self.max_body = max_body
        self.responses = responses
        self.children: dict[tuple[str, int], Any] = {}  # (route, status) -> counter child

    def count(self, route: str, status: int) -> None:
        child = self.children.get((route, status))
        if child is None:
            child = self.children[(route, status)] = self.responses.labels(route, str(status))
        child.inc()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if scope["method"] not in ("GET", "POST"):  # e.g. OPTIONS: 405 naming every method of the path
            allowed = self.methods(scope)
            if allowed and scope["method"] not in allowed:
                self.count(self.template(scope), 405)
                response = JSONResponse(
                    {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)}
                )
                await response(scope, _no_body, send)
                return
        if not (path.startswith(self.PUBLIC) or path == "/"):
            key = next((v for k, v in scope["headers"] if k == b"x-api-key"), None)
            if key not in self.keys:
                await self.reply(
                    scope, send, 401, "missing or invalid API key (send it in the X-API-Key header)"
                )
                return
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await self.reply(scope, send, 413, self.too_large())
                return
            if length is None and scope["method"] != "GET":
                bounded = await self.buffered(scope, receive, send)  # chunked: read here, bounded
                if bounded is None:
                    return
                receive = bounded
        status = 500
        started = False

        async def watched_send(message: Any) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            if started:
                self.count(self.template(scope), status)

    def methods(self, scope: dict[str, Any]) -> list[str]:
        """Every method the routes of this path answer (several routes can share a path)."""
        out: set[str] = set()
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                out |= set(getattr(route, "methods", None) or ())
        return sorted(out)

    def template(self, scope: dict[str, Any]) -> str:
        """The route template a request matched (``/api/recommend/{user_id}``), or ``unmatched``."""
        matched = getattr(scope.get("route"), "path", None)
        if matched:
            return str(matched)
        path = scope["path"]
        known = self.plain.get(path)  # the fast path's requests: no search per request
        if known is not None:
            return known
        for route in self.routes:  # not routed (the fast path, a request refused before routing)
            if route.matches(scope)[0] is Match.FULL:
                template = str(route.path)
                if template == path:  # no path parameters: the same answer every time
                    self.plain[path] = template
                return template
        return "unmatched"

    async def buffered(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """A body sent without Content-Length (chunked), read here up to ``max_body``: a receive that
        replays it, or None after answering 413."""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: the app sees the disconnect
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_body:
                await self.reply(scope, send, 413, self.too_large())
                return None
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Any:
            return replay.pop() if replay else await receive()

        return replayed

    def too_large(self) -> str:
        return f"the request body is larger than [serving] max_body_bytes = {self.max_body:,} bytes"

    async def reply(self, scope: dict[str, Any], send: Any, status: int, detail: str) -> None:
        self.count(self.template(scope), status)
        response = JSONResponse({"detail": detail}, status_code=status)
        await response(scope, _no_body, send)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _event_schemas(app: FastAPI) -> None:
    """The event kinds' schemas in the OpenAPI components (``Event`` and each kind), for clients that
    generate types: ``POST /v1/events`` takes objects of these, each validated on its own (a bad one
    is rejected with its index, the rest kept), so its body schema stays an array of objects."""
    from pydantic import TypeAdapter

    from recstack.schema import Event

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        events = TypeAdapter(Event).json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(events.pop("$defs", {}))
        components["Event"] = events
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the assets the swagger-ui-bundle package ships (FastAPI's default
    page loads them from a CDN, and is blank without the internet)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from starlette.responses import HTMLResponse

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="recstack API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


class FeedApp(FastAPI):
    """FastAPI with one layer outside its middleware stack (``outermost``): the recommend fast
    path, ahead of the error, telemetry and body-limit layers every request would otherwise pass
    through twice (a twentieth of a request's CPU). Anything it raises still becomes a 500."""

    outermost: Callable[[Any], Any] | None = None

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        return stack if self.outermost is None else self.outermost(stack)


class RecommendFastPath:
    """``GET /v1/recommend`` without FastAPI's per-request machinery (routing, dependency solving,
    parameter models): at 200 requests/s that machinery is a tenth of a request's CPU. A request
    with a valid key and well-formed parameters is answered here by the same handler the route
    uses; anything else (a missing key, a bad or out-of-range parameter, a repeated parameter, no
    model yet) goes on to the FastAPI route, which gives the documented answer. The route stays the
    one described in the OpenAPI document."""

    PATH = "/v1/recommend"

    def __init__(
        self,
        app: Any,
        keys: set[str],
        max_n: int,
        ready: Callable[[], bool],
        handler: Callable[[RecommendBody], dict[str, Any]],
        on_error: Callable[[str, RecstackError], JSONResponse],
    ) -> None:
        self.app = app
        self.keys = {k.encode("latin-1") for k in keys}
        self.max_n = max_n
        self.ready = ready
        self.handler = handler
        self.on_error = on_error

    def parse(self, scope: dict[str, Any]) -> RecommendBody | None:
        """The request as the route would validate it, or None to leave it to the route."""
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.PATH:
            return None
        if not any(k == b"x-api-key" and v in self.keys for k, v in scope["headers"]) or not self.ready():
            return None
        params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        given = dict(params)
        if len(given) != len(params) or "fields" in given:
            return None  # a parameter given twice, or item attributes asked for: the route decides
        user_id, n, surface = given.get("user_id"), given.get("n"), given.get("surface", "feed")
        if user_id is not None and not 1 <= len(user_id) <= 256:
            return None
        if n is not None and not (n.isascii() and n.isdigit() and 1 <= int(n) <= self.max_n):
            return None
        if not 1 <= len(surface) <= 64:
            return None
        # every field given: model_construct would otherwise introspect the default factories
        # (inspect.signature of dict and list) on each request
        return RecommendBody.model_construct(
            user_id=user_id, n=int(n) if n is not None else None, surface=surface, context={}, fields=[]
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = self.parse(scope)
        if body is None:
            await self.app(scope, receive, send)
            return
        response: JSONResponse
        try:
            response = JSONResponse(self.handler(body))
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        except RecstackError as exc:
            response = self.on_error(self.PATH, exc)
        await response(scope, receive, send)


def _feature_rows(request: RecRequest, items: np.ndarray, pipeline: Pipeline, state: FeedState) -> list[str]:
    """The feature values the rankers used for each served item, one JSON object each (the
    bundle's [[features]]; computed the same way for items that skipped ranking, such as
    exploration picks): what training reads for this impression."""
    if not len(items):
        return []
    values = served_features(request, items, pipeline.bundle, state)
    return logged_values([f.name for f in pipeline.bundle.features], values)


def _serving_rows(
    served: Candidates, timings_ms: dict[str, float], sizes: dict[str, int], degraded: list[str]
) -> list[str]:
    """What serving knew of each served item, one JSON object each (the impression's ``serving``):
    its source, ``explore`` when exploration placed it, the heavy ranker's raw probability per task
    (``p:<task>``, absent for items it did not score), and on the first item the request's stage
    latencies (``ms:<stage>``), candidate counts (``n:<stage>``) and degraded stages. Built as text:
    it runs on every request."""
    n = len(served)
    if not n:
        return []
    parts: list[list[str]] = [[f'"source": {json.dumps(str(s))}'] for s in served.sources.tolist()]
    if served.explore is not None:
        for part, e in zip(parts, served.explore.tolist(), strict=True):
            if e:
                part.append('"explore": 1.0')
    if served.probs is not None:
        for t, task in enumerate(served.tasks):
            key = json.dumps(f"p:{task}")
            for part, p in zip(parts, served.probs[:, t].tolist(), strict=True):
                if p == p:  # NaN: an item the heavy ranker did not score (an exploration pick)
                    part.append(f"{key}: {p!r}")
    first = parts[0]
    first.extend(f"{json.dumps('ms:' + k)}: {round(v, 4)!r}" for k, v in timings_ms.items())
    first.extend(f"{json.dumps('n:' + k)}: {v}" for k, v in sizes.items())
    if degraded:
        first.append(f'"degraded": {json.dumps(",".join(degraded))}')
    return ["{" + ", ".join(part) + "}" for part in parts]


def freeze_heap() -> None:
    """Move everything alive now (the catalog and the bundle: millions of references at 1M items)
    into the collector's permanent generation. A full collection would otherwise traverse all of it
    (about 100 ms at 1M items, a stall for every request waiting behind it). Reference counting
    still frees these objects; only cycles among them would wait for the next freeze, which first
    unfreezes and collects."""
    global _unfreeze_at_exit
    if not _unfreeze_at_exit:  # let the interpreter's last collection see them (native types check)
        atexit.register(gc.unfreeze)
        _unfreeze_at_exit = True
    gc.unfreeze()
    gc.collect()
    gc.freeze()


_unfreeze_at_exit = False


def bus_for(settings: Settings) -> EventLog:
    """The bus the settings name: the Parquet log (embedded) or the Redis stream."""
    from recstack.events import open_event_log

    return open_event_log(settings)


def registry_source(settings: Settings, name: str | None = None) -> Callable[[], tuple[str, Path] | None]:
    """The registry's champion (of the feed bundle, or of the model ``name``) as (version, local
    folder)."""
    from recstack.registry import Registry

    registry = Registry(settings, name=name)

    def champion() -> tuple[str, Path] | None:
        version = registry.alias("champion")
        return None if version is None else (version, registry.fetch(version))

    return champion


def registry_version(settings: Settings) -> Callable[[str], tuple[str, Path]]:
    """(version, local folder) of a registered feed-model version (a number) or alias; RecstackError
    when there is no such version."""
    from recstack.registry import Registry

    registry = Registry(settings)

    def resolve(ref: str) -> tuple[str, Path]:
        version = ref if ref.isdigit() else registry.alias(ref)
        if version is None:
            raise RecstackError(f"no model version has the alias {ref!r}")
        return version, registry.fetch(version)

    return resolve


__all__ = ["Runtime", "bus_for", "create_app", "registry_source", "registry_version"]
