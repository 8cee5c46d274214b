"""Wiring for the processes: the runtime ``recstack serve`` runs and the worker ``recstack worker``
runs (a training round, ``recstack train``, is ``recstack.train.rounds``)."""

from __future__ import annotations

import logging
import threading

from recstack.autocomplete.sync import publish_autocomplete
from recstack.config import EventLogBackend, OnlineBackend, Settings
from recstack.errors import ConfigError
from recstack.events.base import EventLog
from recstack.serving.api import Runtime, bus_for, registry_source, registry_version
from recstack.serving.state import FeedState
from recstack.serving.worker import FeedWorker, keeps_features, state_store, sync_state

log = logging.getLogger(__name__)


def check_shared_state(settings: Settings) -> None:
    """With the Redis bus the worker runs apart from the API: the state they share cannot be in one
    process's memory."""
    if (
        settings.event_log.backend is EventLogBackend.redis
        and settings.online.backend is OnlineBackend.memory
    ):
        raise ConfigError(
            "[online] backend = 'memory' keeps the worker's state in its own process, but with the Redis "
            "bus the worker runs apart from the API: use 'redis' (or 'auto')"
        )


def make_runtime(settings: Settings, bus: EventLog | None = None) -> Runtime:
    """The API's runtime: the embedded default runs the worker in process; with the Redis bus a
    separate ``recstack worker`` owns the state and the API loads its snapshots."""
    check_shared_state(settings)
    embedded = settings.event_log.backend is EventLogBackend.parquet
    store = state_store(settings)
    return Runtime(
        settings,
        bus or bus_for(settings),
        store=store,
        bundle_source=registry_source(settings),
        in_process_worker=embedded,
        safety_source=registry_source(settings, settings.safety.model_name),
        model_source=registry_version(settings),
    )


def run_worker(settings: Settings, stop: threading.Event, consumer: str = "worker-1") -> FeedWorker:
    check_shared_state(settings)
    store = state_store(settings)
    loaded = sync_state(store)
    resume = None
    if loaded is not None and keeps_features(loaded[0], settings):
        state, resume = loaded
    else:
        state = FeedState.for_settings(settings)
    worker = FeedWorker(
        bus_for(settings),
        state,
        store,
        consumer=consumer,
        snapshot_s=settings.serving.state_sync_s,
        full_s=settings.serving.state_full_s,
        resume=resume,
        window=settings.event_log.window(),
    )
    # the API processes serve autocomplete from the counts this worker publishes
    publish_autocomplete(worker, settings.autocomplete, resumed=worker.resumed_group)
    if settings.monitoring.enabled:
        from recstack.monitoring.monitor import scheduled

        metrics = None
        if settings.monitoring.metrics_port:
            from prometheus_client import CollectorRegistry, start_http_server

            metrics = CollectorRegistry()
            start_http_server(settings.monitoring.metrics_port, registry=metrics)
        threading.Thread(
            target=scheduled, args=(settings, worker.log, stop), kwargs={"metrics": metrics}, daemon=True
        ).start()
    worker.run(stop)
    return worker
