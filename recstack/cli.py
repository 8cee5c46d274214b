"""The ``recstack`` command line. Every command reads the same settings (``--config``, default
``./recstack.toml`` when present, else the embedded defaults; ``RECSTACK_*`` overrides apply)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recstack import data as datasets
from recstack.config import Engine, Settings, annotated_default, default_config_path, load_settings
from recstack.errors import RecstackError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

app = typer.Typer(
    help="recstack: a complete multi-stage recommender system.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Data sets: list, summarize, fetch.", no_args_is_help=True)
events_app = typer.Typer(help="The event log: ingest, replay, join, compact.", no_args_is_help=True)
config_app = typer.Typer(
    help="Configuration: show, check, print the annotated default.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(events_app, name="events")
app.add_typer(config_app, name="config")
safety_app = typer.Typer(
    help="The unsafe-text classifier: train and register it, score the catalog.", no_args_is_help=True
)
app.add_typer(safety_app, name="safety")
experiment_app = typer.Typer(
    help="A/B tests and budgets: analyse an experiment from the log, allocate impressions.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")
features_app = typer.Typer(
    help="Features: materialize the training set of the log (locally or on Ray).", no_args_is_help=True
)
app.add_typer(features_app, name="features")
console = Console(soft_wrap=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="recstack.toml to read.")]
EngineOpt = Annotated[
    Engine | None,
    typer.Option(
        "--engine", help="local or ray: where the heavy jobs run (default: [compute] engine of the config)."
    ),
]


def _engine(settings: Settings, engine: Engine | None) -> Settings:
    """The settings with ``--engine`` applied (when given)."""
    if engine is None:
        return settings
    return settings.model_copy(update={"compute": settings.compute.model_copy(update={"engine": engine})})


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config or default_config_path())
    except RecstackError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(1)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def demo(
    config: ConfigOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="MovieLens-100k folder to use instead of synthetic data.")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Closed-loop rounds of simulated traffic.")] = 3,
    spine: Annotated[
        bool, typer.Option(help="Only the spine: events, join, MF training, evaluation (no serving).")
    ] = False,
) -> None:
    """The playground: simulated world, history, training, registry, the API in process, simulated
    users in a closed loop over HTTP, incremental retraining, an HTML report."""
    settings = _settings(config)
    try:
        if spine:
            from recstack.demo import run_demo

            run_demo(settings, data, console)
        else:
            from recstack.playground import PlaygroundConfig, run_playground

            run_playground(settings, console, data, PlaygroundConfig(rounds=rounds))
    except RecstackError as exc:
        raise _fail(exc) from exc


@app.command()
def train(
    config: ConfigOpt = None,
    dataset: Annotated[str, typer.Option(help="movielens-100k or movielens1m_m1.")] = "movielens-100k",
    split: Annotated[
        str,
        typer.Option(
            help="random (RecBole 8:1:1), temporal or leave-last-out "
            "(movielens-100k); movielens1m_m1 uses its given split."
        ),
    ] = "random",
    feed: Annotated[
        bool, typer.Option("--feed", help="Train the served feed bundle from the event log and register it.")
    ] = False,
    incremental: Annotated[
        bool, typer.Option(help="Feed: warm-start from the champion on the log since its data range ended.")
    ] = False,
    every: Annotated[
        float | None, typer.Option(help="Feed: repeat every this many seconds (default: once).")
    ] = None,
    promote_after: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Feed: promote through the gate after training.")
    ] = True,
    since: Annotated[
        datetime | None, typer.Option(help="Feed: train on events from this time (ISO-8601, UTC if naive).")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Feed: ... up to this time (exclusive).")] = None,
    engine: EngineOpt = None,
) -> None:
    """Train MF with BPR on a data set and report test metrics; with --feed (or --incremental),
    train the feed bundle from the event log, register it and promote it through the gate. With
    --engine ray the neural models train on Ray Train workers and the feed's join, features and
    item vectors run as Ray Data jobs ([compute])."""
    import signal

    from recstack.train.loop import request_stop

    for sig in (signal.SIGINT, signal.SIGTERM):  # training stops at its next batch
        signal.signal(sig, request_stop)
    try:
        _train(config, dataset, split, feed, incremental, every, promote_after, since, until, engine)
    except KeyboardInterrupt:
        from recstack.train.tracking import end_open_runs

        ended = end_open_runs("KILLED")
        console.print(
            f"[red]training interrupted[/red]: nothing was registered; {ended} MLflow run(s) marked "
            "KILLED. A rerun starts from scratch."
        )
        raise typer.Exit(130) from None


def _train(
    config: Path | None,
    dataset: str,
    split: str,
    feed: bool,
    incremental: bool,
    every: float | None,
    promote_after: bool,
    since: datetime | None,
    until: datetime | None,
    engine: Engine | None = None,
) -> None:
    if feed or incremental:
        from recstack.train.loop import STOP, check_stop

        settings = _engine(_settings(config), engine)
        start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
        end = until.replace(tzinfo=until.tzinfo or UTC) if until else None
        if start and end and start >= end:
            raise _fail(RecstackError(f"--since {start.isoformat()} is not before --until {end.isoformat()}"))
        while True:
            try:
                _train_feed(settings, incremental, promote_after, start, end)
            except RecstackError as exc:
                if every is None:
                    raise _fail(exc) from exc
                console.print(f"[red]training round failed:[/red] {escape(str(exc))}")
            if every is None:
                return
            STOP.wait(every)  # a Ctrl-C or SIGTERM between rounds ends the wait
            check_stop()
    from recstack.data.interactions import Interactions
    from recstack.data.readers import read_bars_ml1m, read_movielens_100k
    from recstack.data.splits import Split, leave_last_out, random_ratio_split, temporal_split
    from recstack.train.recipes import encode_split, train_mf_bpr

    settings = _engine(_settings(config), engine)
    try:
        if dataset == "movielens1m_m1":
            bars = read_bars_ml1m(settings.paths.data_dir / "movielens1m_m1")
            parts = [
                Interactions.from_indices(p, bars.n_users, bars.n_items)
                for p in (bars.train, bars.validation, bars.test)
            ]
            tr, va, te = parts
        elif dataset == "movielens-100k":
            ratings = read_movielens_100k(settings.paths.data_dir / "movielens-100k").ratings
            splitters: dict[str, Callable[[pd.DataFrame], Split]] = {
                "random": random_ratio_split,
                "temporal": temporal_split,
                "leave-last-out": leave_last_out,
            }
            if split not in splitters:
                raise RecstackError(f"unknown split '{split}'; choose one of {', '.join(splitters)}")
            tr, va, te = encode_split(*splitters[split](ratings))
        else:
            raise RecstackError(f"train supports movielens-100k and movielens1m_m1, not '{dataset}'")
        run = train_mf_bpr(tr, va, te, settings, run_name=f"mf_bpr_{dataset}")
    except RecstackError as exc:
        raise _fail(exc) from exc
    table = Table("metric", "test")
    for key, value in run.test_metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(
        f"best epoch {run.fit.best_epoch} of {run.fit.epochs_run}; checkpoint {run.fit.checkpoint}; "
        f"MLflow run {run.fit.run_id}"
    )


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default [serving] host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default [serving] port).")] = None,
    processes: Annotated[
        int | None,
        typer.Option(help="API processes forked after loading (default [serving] processes)."),
    ] = None,
) -> None:
    """Run the online API (uvicorn): the registry's champion, hot-reloaded when it changes."""
    from recstack.config import EventLogBackend
    from recstack.serving import prefork

    settings = _settings(config)
    count = processes or settings.serving.processes
    host, port = host or settings.serving.host, port or settings.serving.port
    try:
        prefork.check_processes(count, settings.event_log.backend is EventLogBackend.redis)
        sock = prefork.listen(host, port) if count > 1 else None
    except RecstackError as exc:
        raise _fail(exc) from exc
    metrics_folder = prefork.multiprocess_metrics() if count > 1 else None

    import uvicorn

    from recstack.serving.api import create_app
    from recstack.serving.service import make_runtime

    try:
        try:
            runtime = make_runtime(settings)
        except RecstackError as exc:
            raise _fail(exc) from exc
        access = settings.serving.access_log
        where = (
            f"http://{host}:{port} (API docs at /docs; requests carry an X-API-Key header); state in "
            f"{settings.paths.state_dir}"
        )
        if sock is None:
            runtime.start()
            console.print(f"serving on {where}; Ctrl-C stops it", highlight=False)
            try:
                uvicorn.run(
                    create_app(runtime),
                    host=host,
                    port=port,
                    log_config=prefork.uvicorn_logging(access),
                    access_log=access,
                )
            finally:
                runtime.close()
            return
        prefork.prepare_parent()
        runtime.reload()
        runtime.sync_autocomplete()  # loaded once here, shared by the processes forked from this one
        console.print(f"serving on {where} with {count} processes; Ctrl-C stops them", highlight=False)
        raise typer.Exit(prefork.serve_processes(runtime, create_app, sock, count, access))
    finally:
        prefork.remove_metrics_folder(metrics_folder)


@app.command()
def worker(
    config: ConfigOpt = None,
    consumer: Annotated[str, typer.Option(help="Consumer name within the group.")] = "worker-1",
) -> None:
    """Consume the live bus into the serving state (seen-sets, histories, trending, posteriors)."""
    import signal
    import threading

    from recstack.serving.service import run_worker

    settings = _settings(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"worker {consumer} consuming {settings.event_log.backend.value}; Ctrl-C stops it")
    try:
        run_worker(settings, stop, consumer)
    except KeyboardInterrupt:
        stop.set()
    except RecstackError as exc:
        raise _fail(exc) from exc


@app.command()
def promote(
    config: ConfigOpt = None,
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the challenger).")] = None,
    force: Annotated[bool, typer.Option(help="Promote even if the gate fails.")] = False,
) -> None:
    """Make the challenger (or a version) the champion if it passes the promotion gate."""
    from recstack.registry import Registry

    try:
        result = Registry(_settings(config)).promote(version, force)
    except RecstackError as exc:
        raise _fail(exc) from exc
    console.print(("promoted: " if result.passed or force else "not promoted: ") + escape(result.reason))
    if not (result.passed or force):
        raise typer.Exit(1)


@app.command()
def rollback(config: ConfigOpt = None) -> None:
    """Make the previous champion the champion again."""
    from recstack.registry import Registry

    try:
        version = Registry(_settings(config)).rollback()
    except RecstackError as exc:
        raise _fail(exc) from exc
    console.print(f"champion is version {version} again")


@app.command()
def models(config: ConfigOpt = None) -> None:
    """List registered feed bundles with their aliases, holdout metrics and data range."""
    from recstack.registry import Registry

    table = Table("version", "aliases", "auc_click", "data_start", "data_end")
    for row in Registry(_settings(config)).versions():
        auc_click = row["metrics"].get("auc_click")
        table.add_row(
            row["version"],
            ", ".join(row["aliases"]),
            f"{auc_click:.4f}" if auc_click is not None else "",
            str(row["data_start"]),
            str(row["data_end"]),
        )
    console.print(table)


@app.command()
def evaluate(
    config: ConfigOpt = None,
    version: Annotated[
        list[str] | None,
        typer.Option(help="Registered versions to evaluate (default: champion and challenger)."),
    ] = None,
    holdout: Annotated[float, typer.Option(help="The last share of the log's impressions held out.")] = 0.1,
    since: Annotated[
        datetime | None, typer.Option(help="Hold out the impressions from this time instead (ISO-8601).")
    ] = None,
) -> None:
    """The champion and the challenger (or --version N ...) on one holdout of the event log: AUC,
    GAUC, logloss, NE and ECE per task; Recall and NDCG@K per candidate source and for the merged
    candidates; coverage. Printed, logged to MLflow and plotted."""
    from recstack.evaluate import describe, evaluate_bundles, plot, registry_bundles, track
    from recstack.serving.api import bus_for

    settings = _settings(config)
    if not 0 < holdout < 1:
        raise _fail(RecstackError(f"--holdout {holdout} must be between 0 and 1"))
    try:
        bundles = registry_bundles(settings, version)
        results = evaluate_bundles(
            settings,
            bus_for(settings),
            bundles,
            holdout,
            since.replace(tzinfo=since.tzinfo or UTC) if since else None,
        )
    except RecstackError as exc:
        raise _fail(exc) from exc
    console.print(describe(results))
    track(settings, results)
    path = plot(results, settings.paths.state_dir / "evaluate" / "evaluate.png")
    console.print(
        f"holdout: {results[0].rows:,} impressions, {results[0].users:,} users with engagements; plot {path}"
    )


def _train_feed(
    settings: Settings,
    incremental: bool,
    promote_after: bool,
    start: datetime | None = None,
    end: datetime | None = None,
) -> None:
    from recstack.serving.api import bus_for
    from recstack.train.rounds import train_and_register

    result = train_and_register(
        settings, bus_for(settings), incremental=incremental, promote=promote_after, start=start, end=end
    )
    table = Table("holdout metric", "value")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    gate = f"; gate: {escape(result.gate.reason)}" if result.gate else ""
    console.print(
        f"registered version {result.version} (data {result.data_start} .. {result.data_end}); "
        f"{'promoted to champion' if result.promoted else 'challenger'}{gate}"
    )


@app.command()
def monitor(
    config: ConfigOpt = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Window start (ISO-8601, UTC if naive); default: [monitoring] window_s before --until."
        ),
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Window end (exclusive); default: now.")] = None,
    every: Annotated[
        float | None,
        typer.Option(help="Repeat every this many seconds on the latest window (default: once)."),
    ] = None,
    act: Annotated[
        bool | None,
        typer.Option(
            "--act/--no-act", help="Act on breaches (retrain, recalibrate); default: [monitoring] act."
        ),
    ] = None,
    show: Annotated[str, typer.Option(help="Findings printed: breaches, all.")] = "breaches",
    fail_on_breach: Annotated[
        bool, typer.Option("--fail-on-breach", help="Exit with status 3 when a check breached (alerting).")
    ] = False,
) -> None:
    """Check a window of the serving log: feature and prediction drift against the reference,
    calibration, train/serve skew and online metrics; records every finding in the monitoring table
    and acts on breaches (docs/monitoring.md)."""
    import signal

    from recstack.monitoring.monitor import Monitor
    from recstack.train.loop import STOP, request_stop

    signal.signal(signal.SIGTERM, request_stop)  # ends the wait between rounds

    if show not in ("breaches", "all"):
        raise _fail(RecstackError(f"--show must be breaches or all, not {show!r}"))
    settings = _settings(config)
    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    end = until.replace(tzinfo=until.tzinfo or UTC) if until else None
    try:
        runner = Monitor(settings, _log(settings))
        while True:
            run = runner.run_once(start, end, act=act)
            breached = run.breaches()
            table = Table("version", "check", "subject", "status", "value", "threshold", "detail")
            for version, f in run.findings:
                if show == "all" or f.breached:
                    value = "" if f.value is None else f"{f.value:.4g}"
                    threshold = "" if f.threshold is None else f"{f.threshold:g}"
                    table.add_row(version, f.check, f.subject, f.status, value, threshold, escape(f.detail))
            console.print(
                f"window {run.start.isoformat()} .. {run.end.isoformat()}: {run.impressions:,} impressions, "
                f"champion {run.champion}; {len(run.findings)} findings, {len(breached)} breaches "
                f"(run {run.run_id}, {run.cpu_s:.2f} s CPU)",
                highlight=False,
            )
            if table.row_count:
                console.print(table)
            if run.action is not None:
                a = run.action
                console.print(
                    f"action: {a.kind}" + (f", version {a.version}" if a.version else "")
                    + (" promoted" if a.promoted else "") + f": {escape(a.detail)}",
                    highlight=False,
                )  # fmt: skip
            if every is None:
                break
            if STOP.wait(every):
                break
            start = end = None  # later rounds: the latest window
    except KeyboardInterrupt:
        console.print("monitoring stopped")
        return
    except RecstackError as exc:
        raise _fail(exc) from exc
    if fail_on_breach and breached:
        raise typer.Exit(3)


@app.command()
def report(
    config: ConfigOpt = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (ISO-8601, UTC if naive).")] = None,
    until: Annotated[datetime | None, typer.Option(help="... up to this time (exclusive).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="The HTML file (default: <state_dir>/reports/monitoring.html).")
    ] = None,
    from_log: Annotated[
        bool,
        typer.Option(
            "--from-log",
            help="Run the checks on the log's windows of the range instead of reading the table.",
        ),
    ] = False,
) -> None:
    """Write one HTML page: drift per feature over time, calibration curves per window, online
    metrics, latency per stage and the registry's history (promotions, rollbacks)."""
    from recstack.monitoring.report import report as write

    settings = _settings(config)
    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    end = until.replace(tzinfo=until.tzinfo or UTC) if until else None
    path = out or settings.paths.state_dir / "reports" / "monitoring.html"
    try:
        written = write(settings, _log(settings), path, start, end, from_log=from_log)
    except RecstackError as exc:
        raise _fail(exc) from exc
    console.print(f"report: {written}", highlight=False)


@app.command("import")
def import_files(
    interactions: Annotated[
        Path | None, typer.Argument(help="Interactions file (CSV, TSV, JSONL, Parquet, MovieLens).")
    ] = None,
    items: Annotated[Path | None, typer.Option(help="Item attributes file.")] = None,
    users: Annotated[Path | None, typer.Option(help="User attributes file.")] = None,
    queries: Annotated[
        Path | None, typer.Option(help="Search log: a query, a time and optionally a user per row.")
    ] = None,
    config: ConfigOpt = None,
    fmt: Annotated[str | None, typer.Option("--format", help="[mapping] format, for every file.")] = None,
    columns: Annotated[str | None, typer.Option(help="[mapping] columns, comma-separated.")] = None,
    user: Annotated[str | None, typer.Option(help="[mapping] user: the user column.")] = None,
    item: Annotated[str | None, typer.Option(help="[mapping] item: the item column.")] = None,
    timestamp: Annotated[str | None, typer.Option(help="[mapping] timestamp: the time column.")] = None,
    time_unit: Annotated[str | None, typer.Option(help="[mapping] time_unit: s, ms, us or iso.")] = None,
    rating: Annotated[str | None, typer.Option(help="[mapping] rating: the value column.")] = None,
    engagement: Annotated[
        list[str] | None,
        typer.Option(
            help="KIND=LEAST: rating >= LEAST makes the row a KIND (repeatable; replaces [mapping] "
            "engagements)."
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="[mapping] kind: a column naming each row's kind.")] = None,
    no_impressions: Annotated[bool, typer.Option(help="Rows are engagements only, no impressions.")] = False,
    text: Annotated[
        list[str] | None, typer.Option(help="[mapping] text: an item text column (repeatable).")
    ] = None,
    creator: Annotated[str | None, typer.Option(help="[mapping] creator: the item creator column.")] = None,
    catalog_time: Annotated[
        datetime | None, typer.Option(help="[mapping] catalog_time (ISO-8601, UTC).")
    ] = None,
) -> None:
    """Import a team's own files into the event log: interactions become impressions and
    engagements, item and user rows upserts, with ids derived from the rows (importing a file again
    adds nothing). Bad lines are reported with file, line and reason; the rest is imported (exit 1
    when any line was bad)."""
    from recstack.config import MappingConfig
    from recstack.data.importer import count_rows, earliest_time, import_file
    from recstack.safety.items import IngestScorer

    settings = _settings(config)
    given: dict[str, Any] = {
        "format": fmt,
        "columns": [c.strip() for c in columns.split(",")] if columns else None,
        "user": user,
        "item": item,
        "timestamp": timestamp,
        "time_unit": time_unit,
        "rating": rating,
        "kind": kind,
        "creator": creator,
        "text": text or None,
        "catalog_time": catalog_time.replace(tzinfo=catalog_time.tzinfo or UTC) if catalog_time else None,
    }
    update = {k: v for k, v in given.items() if v is not None}
    if no_impressions:
        update["impressions"] = False
    if kind is not None:
        update["rating"] = None
    try:
        if engagement:
            update["engagements"] = {
                k.strip(): float(v) for k, _, v in (e.partition("=") for e in engagement)
            }
        mapping = MappingConfig.model_validate(settings.mapping.model_dump() | update)
    except ValueError as exc:
        raise _fail(RecstackError(f"bad mapping: {exc}")) from exc
    given_files = ((items, "items"), (users, "users"), (interactions, "interactions"), (queries, "queries"))
    files = [(p, what) for p, what in given_files if p]
    if not files:
        raise _fail(
            RecstackError("nothing to import: give an interactions file, --items, --users or --queries")
        )
    log = _log(settings)
    summaries = []
    moderation = IngestScorer(settings)
    try:
        catalog_us: int | None
        if mapping.catalog_time is not None:
            catalog_us = int(mapping.catalog_time.timestamp() * 1_000_000)
        else:
            first = earliest_time(interactions, mapping, mapping.format) if interactions else None
            catalog_us = first - 1_000_000 if first is not None else None
        with _progress() as bar:
            for path, what in files:
                total = count_rows(path, mapping.format)
                task = bar.add_task(f"{what} {path.name}", total=total)
                summaries.append(
                    import_file(
                        log,
                        path,
                        what,
                        mapping,
                        mapping.format,
                        catalog_us,
                        mapping.batch,
                        progress=lambda n, task=task: bar.advance(task, n),  # type: ignore[misc]
                        transform=moderation if what == "items" else None,
                    )
                )
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    finally:
        log.close()
    for summary in summaries:
        events = ", ".join(f"{k} {v:,}" for k, v in summary.events.items()) or "no events"
        console.print(
            f"{escape(summary.path.name)}: {summary.rows:,} rows -> {events}; accepted {summary.accepted:,}, "
            f"duplicates {summary.duplicates:,}, bad lines {summary.bad_lines:,}",
            highlight=False,
        )
    if moderation.scored:
        console.print(f"moderation: {_items(moderation.scored)} with text scored", highlight=False)
    if moderation.unscored:
        held = (
            "held back from the feed until `recstack safety rescore`"
            if moderation.held_back()
            else "served unscored"
        )
        console.print(
            f"moderation: {_items(moderation.unscored)} with text not scored "
            f"({escape(moderation.problem or '')}); {held}",
            highlight=False,
        )
    bad = [(s.path.name, line, reason) for s in summaries for line, reason in s.errors]
    for name, line, reason in bad[:20]:
        console.print(f"  {escape(name)} line {line}: {escape(reason)}")
    if len(bad) > 20:
        console.print(f"  ... and {len(bad) - 20} more bad lines")
    if bad:
        raise typer.Exit(1)


@data_app.command("list")
def data_list(config: ConfigOpt = None) -> None:
    """The known data sets, whether each is present, and its licence."""
    settings = _settings(config)
    table = Table("name", "present", "licence", "note")
    for info in datasets.DATASETS.values():
        present = (settings.paths.data_dir / info.folder).exists()
        table.add_row(info.name, "yes" if present else "no", info.licence, info.note)
    console.print(table)


@data_app.command("summary")
def data_summary(
    name: Annotated[str, typer.Argument(help="Data set name (see `recstack data list`), or 'all'.")],
    path: Annotated[
        Path | None, typer.Option(help="Folder of the data set (default: data_dir/name).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Load a data set and print its summary."""
    settings = _settings(config)
    names = list(datasets.DATASETS) if name == "all" else [name]
    try:
        for item in names:
            info = datasets.dataset(item)
            loaded: Any = info.load(path or settings.paths.data_dir / info.folder)
            console.print(f"[bold]{item}[/bold]")
            console.print_json(json.dumps(loaded.summary()))
    except RecstackError as exc:
        raise _fail(exc) from exc


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Data set name.")],
    config: ConfigOpt = None,
) -> None:
    """Download a data set from its publisher into data_dir (needs the internet)."""
    settings = _settings(config)
    try:
        target = datasets.fetch(name, settings.paths.data_dir)
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    console.print(f"downloaded {name} to {target}")


def _progress(disable: bool = False) -> Any:
    """A progress bar on the console (description, bar, done / total, time), off when the
    console is not a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable or not console.is_terminal,
    )


def _items(n: int) -> str:
    return f"{n:,} item" + ("" if n == 1 else "s")


def _log(settings: Settings) -> Any:
    from recstack.events import open_event_log

    return open_event_log(settings)


@events_app.command("ingest")
def events_ingest(
    path: Annotated[Path, typer.Argument(help="JSON-lines file of events.")],
    config: ConfigOpt = None,
    batch: Annotated[int, typer.Option(help="Events per append.")] = 10_000,
) -> None:
    """Append events from a JSON-lines file; bad lines are reported with their line number."""
    from rich.progress import track

    from recstack.events.base import AppendResult, chunked

    settings = _settings(config)
    log = _log(settings)
    total = AppendResult()
    try:
        raws: list[Any] = []
        bad_json: list[str] = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        raws.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        bad_json.append(f"line {number}: invalid JSON ({exc.msg})")
                        raws.append(None)
        for offset, chunk in track(
            list(enumerate(chunked(raws, batch))), description="ingesting", disable=len(raws) <= batch
        ):
            result = log.append(chunk)
            for rejected in result.rejected:
                rejected_index = offset * batch + rejected.index
                total.rejected.append(type(rejected)(rejected_index, rejected.error))
            total.accepted += result.accepted
            total.duplicates += result.duplicates
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    finally:
        log.close()
    console.print(f"accepted {total.accepted}, duplicates {total.duplicates}, rejected {len(total.rejected)}")
    for message in bad_json[:20]:
        console.print(f"  {message}")
    for rejected in total.rejected[:20]:
        console.print(f"  #{rejected.index}: {rejected.error}")
    if total.rejected:
        raise typer.Exit(1)


@events_app.command("replay")
def events_replay(
    config: ConfigOpt = None,
    since: Annotated[datetime | None, typer.Option(help="Inclusive start (ISO-8601, UTC if naive).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Exclusive end.")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Kinds to replay (repeatable).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 100,
) -> None:
    """Print events from the log as JSON lines, in append order."""
    from datetime import UTC

    settings = _settings(config)
    log = _log(settings)
    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    end = until.replace(tzinfo=until.tzinfo or UTC) if until else None
    try:
        for n, event in enumerate(log.replay(start, end, kind)):
            if n >= limit:
                break
            typer.echo(event.model_dump_json())
    except RecstackError as exc:
        raise _fail(exc) from exc
    finally:
        log.close()


@events_app.command("join")
def events_join(
    out: Annotated[Path, typer.Argument(help="Parquet file for the labelled impressions.")],
    config: ConfigOpt = None,
) -> None:
    """Join engagements to impressions; write one labelled row per impression."""
    import pyarrow.parquet as pq

    from recstack.events.join import join_engagements

    settings = _settings(config)
    log = _log(settings)
    try:
        result = join_engagements(log.table(), settings.event_log.attribution_window_s)
    except RecstackError as exc:
        raise _fail(exc) from exc
    finally:
        log.close()
    pq.write_table(result.table, out)
    console.print(
        f"wrote {result.table.num_rows} impressions to {out}; unattributed engagements: {result.unattributed}"
    )


@events_app.command("dead-letters")
def events_dead_letters(
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, the newest last.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line, with the event.")] = False,
) -> None:
    """Events the feed worker could not apply (unreadable, timed outside the accepted window, or
    failing when applied), with the reason; the rest of their batches were applied."""
    from recstack.serving.worker import dead_letters, state_store

    settings = _settings(config)
    try:
        store = state_store(settings)
        count, records = dead_letters(store, limit=limit)
        store.close()
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    if as_json:
        for record in records:
            typer.echo(json.dumps(record))
        return
    console.print(f"{count} dead letters in all; the last {len(records)}:" if count else "no dead letters")
    for record in records:
        console.print(
            f"  {record['at']}  {record['event_id']}: {record['reason']}", markup=False, highlight=False
        )


@events_app.command("compact")
def events_compact(config: ConfigOpt = None) -> None:
    """Merge each day's small Parquet files (embedded log only)."""
    from recstack.events.parquet import ParquetEventLog

    settings = _settings(config)
    log = _log(settings)
    if not isinstance(log, ParquetEventLog):
        raise _fail(RecstackError("compact applies to the parquet backend only"))
    console.print(f"removed {log.compact()} files")


@safety_app.command("train")
def safety_train(
    config: ConfigOpt = None,
    promote_after: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Promote through the gate after training.")
    ] = True,
) -> None:
    """Train the [safety] classifier on the labelled tweets (a fixed stratified split), pick its block
    and review thresholds on validation, register it and promote it through the gate on validation
    [safety] gate_metric. POST /v1/moderate serves the champion."""
    from recstack.registry import Registry
    from recstack.safety.model import train_safety

    settings = _settings(config)
    cfg = settings.safety
    folder = settings.paths.state_dir / "build" / "safety"
    try:
        with _progress(disable=cfg.model.value != "minilm_ft") as bar:  # only fine-tuning has steps
            task = bar.add_task("fine-tuning steps", total=None)
            model, metrics = train_safety(
                settings, folder, progress=lambda n, total: bar.update(task, advance=n, total=total)
            )
        registry = Registry(settings, name=cfg.model_name, gate_metric=cfg.gate_metric)
        lineage = {"model": cfg.model.value, "rows": model.meta["rows"], "seed": cfg.seed}
        version = registry.register(folder, metrics, lineage)
        registry.set_alias("challenger", version)
        gate = registry.promote(version) if promote_after else None
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    at_share = f" at {cfg.prevalence:.0%} unsafe" if cfg.prevalence is not None else ""
    table = Table("metric", "validation", "test")
    for key in ("macro_f1", "weighted_f1", "hate_f1", "offensive_f1", "neither_f1", "pr_auc", "unsafe_f1"):
        table.add_row(key, f"{metrics[key]:.4f}", f"{metrics['test_' + key]:.4f}")
    console.print(table)
    console.print(
        f"thresholds on the unsafe score: block at {model.block_at:.4f} ({cfg.block_precision:.0%} precision "
        f"on validation{at_share}), review at {model.review_at:.4f} ({cfg.review_precision:.0%})",
        highlight=False,
    )
    state = "challenger" if gate is None or not gate.passed else "promoted to champion"
    reason = f"; gate: {escape(gate.reason)}" if gate else ""
    console.print(f"registered {cfg.model_name} version {version}; {state}{reason}", highlight=False)


@safety_app.command("rescore")
def safety_rescore(
    config: ConfigOpt = None,
    everything: Annotated[
        bool,
        typer.Option("--all", help="Score every item with text again, not only those the champion has not."),
    ] = False,
    engine: EngineOpt = None,
) -> None:
    """Score the catalog's items with text by the safety champion (after `recstack safety train`
    promoted a new one, or to release items held back unscored), appending each as an upsert with
    its new score; the worker applies them like any upsert. Items the champion already scored are
    skipped (run it again: it appends nothing)."""
    from recstack.safety.items import champion_scorer, rescore_catalog

    settings = _engine(_settings(config), engine)
    log = _log(settings)
    try:
        scorer = champion_scorer(settings)
        with _progress() as bar:
            task = bar.add_task(f"scoring with {scorer.version}", total=None)
            done = rescore_catalog(
                log,
                scorer,
                everything,
                progress=lambda n, total: bar.update(task, completed=n, total=total),
                compute=settings.compute,
            )
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    finally:
        log.close()
    decisions = ", ".join(f"{k} {v:,}" for k, v in sorted(done.decisions.items())) or "none"
    console.print(
        f"{done.considered:,} items with text; {done.scored:,} scored by {scorer.version} and appended "
        f"({decisions}); {done.considered - done.scored:,} already scored by it",
        highlight=False,
    )


@experiment_app.command("report")
def experiment_report(
    name: Annotated[str, typer.Argument(help="The experiment's name in [experiments] tests.")],
    config: ConfigOpt = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Where to write the plot (default: the state dir).")
    ] = None,
) -> None:
    """Analyse an experiment from the event log: per-user metrics by arm against the control (Welch's
    t-test, confidence intervals, CUPED on the primary metric), the sample-ratio check, the guardrails
    and a ship decision per arm; writes a plot of every metric's relative difference."""
    from recstack.config import Design
    from recstack.experiments.report import analyse, analyse_interleaving, find_experiment
    from recstack.experiments.report import plot as draw

    settings = _settings(config)
    try:
        test = find_experiment(settings, name)
        if test.design is Design.interleave:
            mixed = analyse_interleaving(settings, test, _log(settings).table())
        else:
            report = analyse(settings, test, _log(settings).table())
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    if test.design is Design.interleave:
        p, (first, second) = mixed.preference, mixed.arms
        console.print(
            f"experiment {name} (interleaved): {mixed.requests:,} requests, {mixed.decided:,} decided by "
            f"clicks, {p.users:,} users; preference for {first} over {second}: {p.score:+.4f} "
            f"[{p.ci_low:+.4f}, {p.ci_high:+.4f}], p = {p.p_value:.3g}: "
            + (f"{first if p.score > 0 else second} wins" if p.significant else "no significant preference"),
            highlight=False,
        )
        return
    users = ", ".join(f"{arm} {n:,}" for arm, n in report.users.items())
    console.print(
        f"experiment {name}: users {users}; sample ratio p = {report.ratio.p_value:.3g}"
        + (" [bold red]MISMATCH[/]" if report.ratio.mismatch else "")
        + (f"; {report.switched} users logged in two arms" if report.switched else ""),
        highlight=False,
    )
    for arm in report.arms:
        table = Table("metric", report.control, arm.arm, "difference", "95% interval", "relative", "p", "MDE")
        rows = list(arm.comparisons.values()) + ([arm.cuped] if arm.cuped is not None else [])
        for c in rows:
            table.add_row(
                c.metric, f"{c.mean_control:.5g}", f"{c.mean_treatment:.5g}", f"{c.diff:+.4g}",
                f"[{c.ci_low:+.4g}, {c.ci_high:+.4g}]", f"{c.rel_diff:+.2%}", f"{c.p_value:.3g}",
                f"{c.mde:.3g}",
            )  # fmt: skip
        console.print(table)
        if arm.cuped is not None:
            console.print(
                f"CUPED on {report.metric}: variance {arm.variance_reduction:.1%} lower", highlight=False
            )
        for g in arm.guardrails:
            state = "passed" if g.passed else "[bold red]failed[/]"
            console.print(f"guardrail {g.metric}: worst {g.worst:+.2%} (max drop {g.max_drop:.1%}) {state}")
        verdict = "[bold green]ship[/]" if arm.decision.ship else "[bold]no ship[/]"
        console.print(f"{arm.arm}: {verdict}: " + escape("; ".join(arm.decision.reasons)))
    path = draw(report, plot or settings.paths.state_dir / "reports" / f"experiment-{name}.png")
    console.print(f"plot: {path}", highlight=False)


@experiment_app.command("ope")
def experiment_ope(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Model versions or aliases to estimate (default: challenger)."),
    ] = None,
    config: ConfigOpt = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Window start (ISO time; default: the whole log).")
    ] = None,
    requests: Annotated[
        int, typer.Option("--requests", min=1, help="Logged requests replayed at most.")
    ] = 2_000,
) -> None:
    """Estimate a registered model's click rate on the logs the serving version produced, before it
    gets traffic: the logged requests are replayed through its pipeline on the state at the window's
    start, and IPS, SNIPS, DM and DR (with bootstrap intervals) read the logged clicks and
    propensities. The serving version is replayed too, as a check that the method recovers the
    click rate it actually had."""
    from recstack.serving.api import registry_version
    from recstack.serving.replay import off_policy

    settings = _settings(config)
    try:
        start = datetime.fromisoformat(since) if since else None
        if start is not None and start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        report = off_policy(settings, _log(settings), models or ["challenger"], registry_version(settings),
                            since=start, max_requests=requests)  # fmt: skip
    except (RecstackError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    console.print(
        f"{report.requests:,} logged requests ({report.impressions:,} impressions) since "
        f"{report.start:%Y-%m-%d %H:%M} UTC, served by version {report.logged_version}: click rate "
        f"{report.logged_ctr:.4f}",
        highlight=False,
    )
    table = Table("model", "version", "agreement", "IPS", "SNIPS", "DM", "DR")
    for policy in report.policies:
        cells = [
            f"{e.value:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}]" if (e := policy.estimates.get(k)) else "-"
            for k in ("ips", "snips", "dm", "dr")
        ]
        label = policy.model + (" (serving: the check)" if policy.version == report.logged_version else "")
        table.add_row(label, policy.version, f"{policy.agreement:.1%}", *cells)
    console.print(table)
    console.print(
        "agreement: the share of logged impressions the replay reproduces; IPS and SNIPS see only those, "
        "DM and DR carry the estimate where it is low",
        highlight=False,
    )


@experiment_app.command("budget")
def experiment_budget(
    counts: Annotated[Path, typer.Argument(help="CSV with columns item, impressions, clicks (day 0).")],
    budget: Annotated[int, typer.Option("--budget", min=0, help="Impressions to allocate.")],
    allocator: Annotated[
        str, typer.Option("--allocator", help="thompson, ucb1, greedy, epsilon_greedy or uniform.")
    ] = "thompson",
    epsilon: Annotated[float, typer.Option("--epsilon", min=0, max=1)] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write the allocation as CSV here.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows to print.")] = 20,
) -> None:
    """Allocate the next day's impression budget from each item's day-0 counts: Thompson gives each
    item the budget times its posterior probability of being the best (Beta posteriors, prior fitted
    to all items by empirical Bayes); deterministic allocators give it to their top item."""
    import numpy as np

    from recstack.config import Allocator
    from recstack.experiments.bandits import fit_prior, make_policy
    from recstack.experiments.bandits import plan as allocate_plan

    try:
        kind = Allocator(allocator)
    except ValueError:
        raise _fail(
            RecstackError(f"allocator {allocator!r} unknown; valid: {[a.value for a in Allocator]}")
        ) from None
    try:
        frame = pd.read_csv(counts)
    except (OSError, ValueError) as exc:
        raise _fail(RecstackError(f"{counts}: {exc}")) from exc
    missing = [c for c in ("item", "impressions", "clicks") if c not in frame.columns]
    if missing:
        raise _fail(RecstackError(f"{counts}: missing columns {missing} (has {list(frame.columns)})"))
    if frame.empty:
        raise _fail(RecstackError(f"{counts}: no items"))
    try:
        shown = pd.to_numeric(frame["impressions"], errors="raise").to_numpy(np.float64)
        clicked = pd.to_numeric(frame["clicks"], errors="raise").to_numpy(np.float64)
        prior = fit_prior(shown, clicked)
        given = allocate_plan(
            make_policy(kind, prior, epsilon), shown, clicked, budget, np.random.default_rng(seed)
        )
    except (RecstackError, ValueError) as exc:
        raise _fail(RecstackError(f"{counts}: {exc}")) from exc
    frame["allocated"] = given
    frame["posterior_mean"] = (prior.a + clicked) / (prior.a + prior.b + shown)
    console.print(
        f"{len(frame):,} items; prior Beta({prior.a:.3g}, {prior.b:.3g}) (mean {prior.mean:.4g}); "
        f"{budget:,} impressions by {kind.value}"
        + (f"; {int((given > 0).sum())} items get some" if budget else ""),
        highlight=False,
    )
    table = Table("item", "impressions", "clicks", "posterior mean", "allocated")
    for row in frame.sort_values("allocated", ascending=False).head(top).itertuples():
        table.add_row(str(row.item), f"{row.impressions:,}", f"{row.clicks:,}", f"{row.posterior_mean:.4f}",
                      f"{row.allocated:,}")  # fmt: skip
    console.print(table)
    if out is not None:
        frame.to_csv(out, index=False)
        console.print(f"wrote {out}", highlight=False)


@features_app.command("materialize")
def features_materialize(
    config: ConfigOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for rows.parquet and features.json (default <state_dir>/training_set)."),
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Impressions from this time (ISO-8601, UTC if naive).")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="... up to this time (exclusive).")] = None,
    engine: EngineOpt = None,
) -> None:
    """Build the training set of the event log: each impression labelled with what it caused and
    every [[features]] definition's value as of its time (point in time: only earlier events
    count), locally with DuckDB or as Ray Data jobs (--engine ray); both give the same rows."""
    from recstack.features.offline import save_materialized
    from recstack.features.training_set import build_training_set

    settings = _engine(_settings(config), engine)
    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    end = until.replace(tzinfo=until.tzinfo or UTC) if until else None
    folder = out or settings.paths.state_dir / "training_set"
    log = _log(settings)
    try:
        built = build_training_set(settings, log, start, end)
        save_materialized(built.table, settings.features, folder)
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    finally:
        log.close()
    console.print(
        f"{built.table.num_rows:,} impressions x {len(settings.features)} features on {built.engine.value} "
        f"in {built.seconds:.1f} s -> {folder / 'rows.parquet'} (unattributed engagements: "
        f"{built.unattributed:,})",
        highlight=False,
    )


@app.command()
def candidates(
    config: ConfigOpt = None,
    k: Annotated[int, typer.Option(min=1, help="Candidates per user.")] = 100,
    out: Annotated[
        Path | None, typer.Option(help="Parquet file (default <state_dir>/candidates.parquet).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Bundle version (default: the champion).")] = None,
    engine: EngineOpt = None,
) -> None:
    """Batch retrieval: the two-tower's top k for every user the log knows, with the user's recent
    engagements as history, from the champion bundle (or --version): rows user_id, rank, item_id,
    score. Locally or as a Ray Data job (--engine ray)."""
    import pyarrow.parquet as pq

    from recstack.registry import Registry
    from recstack.scale.inference import candidates as batch_candidates
    from recstack.scale.inference import user_histories

    settings = _engine(_settings(config), engine)
    target = out or settings.paths.state_dir / "candidates.parquet"
    log = _log(settings)
    try:
        registry = Registry(settings)
        chosen = version or registry.alias("champion")
        if chosen is None:
            raise RecstackError("no champion bundle: train one first (recstack train --feed)")
        folder = registry.fetch(chosen)
        users, histories = user_histories(log.table(), folder)
        started = time.perf_counter()
        table = batch_candidates(folder, users, histories, k, settings.compute)
        seconds = time.perf_counter() - started
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
    except (RecstackError, OSError) as exc:
        raise _fail(exc) from exc
    finally:
        log.close()
    served = len(set(table.column("user_id").to_pylist()))
    console.print(
        f"{table.num_rows:,} candidates for {served:,} of {len(users):,} users from version {chosen} on "
        f"{settings.compute.engine.value} in {seconds:.1f} s -> {target}",
        highlight=False,
    )


@config_app.command("default")
def config_default() -> None:
    """Print the annotated default recstack.toml."""
    typer.echo(annotated_default())


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the resolved settings (file + environment) as JSON."""
    console.print_json(_settings(config).model_dump_json())


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="recstack.toml to validate.")]) -> None:
    """Validate a config file; exit 2 with the reason when it is invalid."""
    _settings(path)
    console.print(f"{path}: ok")
