"""Train the served feed bundle from the event log: two-tower retrieval and the rankers that
``[ranking]`` names (the heavy ranker of its ``model`` kind with one head per task, the ``light``
first stage distilled from it, each head's ``calibration``, the ``position`` handling), evaluated on
a temporal holdout.

Data: the log's events in [start, end). Positives for retrieval are click, like, share and comment;
ranking rows are the impressions labelled with what they caused (``join_engagements``). Both are
split by time: the first 80% of impressions train, the next 10% select epochs and fit calibration,
the last 10% are the holdout the promotion gate reads (``auc_<task>``, ``logloss_<task>``).

Features (features/feed.py): an impression served by recstack carries the dense values serving
used (logged with it), which training reads as they are; history without them gets the same
values computed as of the impression (item age, item click rate from earlier impressions) and the
retrieval score from the towers just trained.

Tasks: a task whose label has one class in the training rows is left out with a warning naming it
before any model trains (the bundle's ``tasks_left_out`` says why; value weights that name it are
reported); no task with two classes is an error.

Incremental (``champion`` given): the towers and both rankers continue from the champion's weights
in its id spaces and feature vocabularies (users and items it never saw use the unseen row / the
history path), on the log since the champion's data range ended.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recstack.config import (
    CalibrationKind,
    Engine,
    HoldoutKind,
    LightRankerKind,
    PositionCorrection,
    RankerKind,
    Settings,
)
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.eval.metrics import auc, logloss
from recstack.events.base import EventLog
from recstack.events.join import join_engagements
from recstack.features.columnar import feed_features
from recstack.features.definitions import Attribute, LastN, RetrievalScore
from recstack.features.feed import categorical_text, history_similarity, is_categorical, ranker_inputs
from recstack.features.offline import check_attributes, materialize
from recstack.features.online import AnyFeature
from recstack.index.retriever import TwoTowerRetriever
from recstack.models.calibration import Isotonic, Platt
from recstack.models.two_tower import TwoTower
from recstack.monitoring.reference import build_reference, save_reference
from recstack.scale.inference import item_vectors
from recstack.schema import POSITIVE_KINDS
from recstack.servables.bundle import FORMAT
from recstack.servables.calibration import read_calibration
from recstack.servables.ranker import load_ranker, score_frame
from recstack.tasks.ranking import position_propensities, top_k_labels
from recstack.train.loop import check_stop
from recstack.train.ranking import NeuralRanker, PerTaskTrainer, make_ranker
from recstack.train.recipes import train_two_tower
from recstack.train.sources import train_sources

logger = logging.getLogger(__name__)


@dataclass
class BundleReport:
    folder: Path
    metrics: dict[str, float]
    data_start: str | None
    data_end: str
    rows: dict[str, int] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)


def catalog_items(upserts: pa.Table) -> list[str]:
    """Every item id the upserts (events of the log) name, in the order of their latest upsert."""
    table = upserts.filter(pc.equal(upserts["kind"], "item"))
    if table.num_rows == 0:
        raise RecstackError("the event log holds no items: upsert the catalog first")
    frame = table.select(["item_id", "timestamp"]).to_pandas()
    frame = frame.sort_values("timestamp", kind="stable").drop_duplicates("item_id", keep="last")
    items: list[str] = frame["item_id"].tolist()
    return items


def frame_from_join(joined: pa.Table) -> pd.DataFrame:
    frame = joined.to_pandas()
    frame["timestamp_us"] = frame["timestamp"].astype("datetime64[us, UTC]").astype(np.int64)
    context = frame["context"].map(lambda c: json.loads(c) if c else {})
    frame["device"] = context.map(lambda c: c.get("device", ""))
    frame["logged"] = frame["features"].map(lambda f: json.loads(f) if f else {})
    return frame


def split_by_time(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    order = np.argsort(frame["timestamp_us"].to_numpy(), kind="stable")
    n = len(frame)
    a, b = int(n * 0.8), int(n * 0.9)
    parts = (order[:a], order[a:b], order[b:])
    return tuple(frame.iloc[p].reset_index(drop=True) for p in parts)


def served_rows(frame: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the impressions the API served (their model versions name a feed bundle), as
    against imported or backfilled ones."""
    versions = frame["model_versions"] if "model_versions" in frame else pd.Series([None] * len(frame))
    return np.array([bool(v) and '"feed"' in v for v in versions], dtype=bool)


def split_holdout(frame: pd.DataFrame, kind: HoldoutKind) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, valid, holdout): ``tail``, the window's impressions 8:1:1 by time; ``served``, the last
    10% of the served impressions as the holdout and what came before them 8:1 by time."""
    if kind is HoldoutKind.tail:
        return split_by_time(frame)
    served = frame[served_rows(frame)]
    if len(served) < 20:
        raise RecstackError(
            f"[train] holdout = served, but the window holds {len(served)} impressions the API served "
            "(at least 20 are needed): serve traffic first, or use holdout = tail"
        )
    times = np.sort(served["timestamp_us"].to_numpy())
    cut = times[int(len(times) * 0.9)]
    holdout = served[served["timestamp_us"] >= cut].reset_index(drop=True)
    before = frame[frame["timestamp_us"] < cut]
    order = np.argsort(before["timestamp_us"].to_numpy(), kind="stable")
    a = int(len(before) * 8 / 9)
    train, valid = (before.iloc[p].reset_index(drop=True) for p in (order[:a], order[a:]))
    if not len(train) or not len(valid):
        raise RecstackError("[train] holdout = served: nothing before the served holdout to train on")
    return train, valid, holdout


def mixed_sources(frame: pd.DataFrame, factor: float) -> str | None:
    """A warning when the window mixes served impressions and others whose click rates differ by
    more than ``factor`` (a model trained on both scores neither well), else None."""
    served = served_rows(frame)
    if served.all() or not served.any():
        return None
    clicks = frame["click"].to_numpy(np.float64)
    ctr_served, ctr_other = clicks[served].mean(), clicks[~served].mean()
    low, high = sorted((ctr_served, ctr_other))
    if low > 0 and high / low <= factor:
        return None
    ratio = f"{high / low:.1f} times" if low > 0 else "infinitely"
    return (
        f"the training window mixes {int(served.sum()):,} served impressions (click rate {ctr_served:.1%}) "
        f"and {int((~served).sum()):,} others, imported or backfilled (click rate {ctr_other:.1%}): the "
        f"rates differ {ratio}, more than [train] mixed_ctr_factor = {factor:g}. Train on one of them "
        "(recstack train --feed --since/--until) or hold out served traffic ([train] holdout = served)."
    )


def holdout_metrics(y: pd.DataFrame, probs: np.ndarray, tasks: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, task in enumerate(tasks):
        labels = y[task].to_numpy(np.float64)
        if len(np.unique(labels)) < 2:
            continue
        out[f"auc_{task}"] = auc(labels, probs[:, t])
        out[f"logloss_{task}"] = logloss(labels, probs[:, t])
    return out


def usable_tasks(train: pd.DataFrame, tasks: list[str]) -> tuple[list[str], dict[str, str]]:
    """(tasks whose label has both classes in ``train``, {task left out: why})."""
    kept, left_out = [], {}
    for task in tasks:
        values = train[task].to_numpy()
        positives = int((values > 0).sum())
        if 0 < positives < len(values):
            kept.append(task)
        else:
            left_out[task] = f"one class in {len(values)} training rows ({positives} positive)"
    return kept, left_out


def _with_ranking(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={"ranking": settings.ranking.model_copy(update=update)})


def _light_settings(settings: Settings) -> Settings:
    """The light ranker: the configured light kind with one task (``heavy_top_k``), no position;
    a neural one is a small shared-bottom net."""
    kind = RankerKind(settings.ranking.light.value)
    update: dict[str, Any] = {
        "model": kind,
        "tasks": {"heavy_top_k": 1.0},
        "position": PositionCorrection.none,
    }
    if kind is RankerKind.shared_bottom:
        update |= {"hidden": [32], "tower_hidden": [16], "embedding_dim": 8}
    return _with_ranking(settings, **update)


def _warm_folder(champion: Path | None, part: str, kind: str, tasks: list[str]) -> Path | None:
    """The champion's ranker folder to warm-start from when it is of the same kind with the same
    tasks, else None (the ranker trains from scratch; a kind or task change is a new model)."""
    if champion is None or not (champion / part / "ranker.json").exists():
        return None
    meta = json.loads((champion / part / "ranker.json").read_text())
    if meta.get("kind", "dcn_v2") == kind and list(meta.get("tasks", [])) == tasks:
        return champion / part
    logger.info(
        "the champion's %s ranker (%s, tasks %s) differs: training it from scratch",
        part,
        meta.get("kind"),
        meta.get("tasks"),
    )
    return None


def fit_calibration(kind: CalibrationKind, probs: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
    """A task's calibration as calibration.json holds it (servables/calibration.py), or None when
    off or when validation has one class."""
    if kind is CalibrationKind.none or len(np.unique(labels)) < 2:
        return None
    if kind is CalibrationKind.platt:
        platt = Platt().fit(probs, labels)
        return {"kind": "platt", "a": platt.a, "b": platt.b}
    iso = Isotonic().fit(probs, labels).model
    return {"kind": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def train_bundle(
    settings: Settings,
    log: EventLog,
    folder: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    champion: Path | None = None,
    champion_version: str | None = None,
) -> BundleReport:
    """Train a bundle into ``folder`` (replaced) from the log's events in [start, end)."""
    cfg = settings.ranking
    features = feed_features(settings.features)
    upserts = log.table(kinds=["item", "user"])
    catalog = catalog_items(upserts)
    check_attributes(upserts, features)  # before anything trains
    on_ray = settings.compute.engine == Engine.ray
    events = log.table(start=start, end=end)
    if on_ray:  # the join as a Ray Data job over the log's files: the same rows
        from recstack.scale.data import join_on_ray

        joined = frame_from_join(join_on_ray(settings, start, end).table)
    else:
        joined = frame_from_join(join_engagements(events, settings.event_log.attribution_window_s).table)
    if len(joined) < 100:
        raise RecstackError(
            f"{len(joined)} impressions in the selected range: at least 100 are needed to train a ranker"
        )
    data_end = end or joined["timestamp"].max().to_pydatetime() + pd.Timedelta(microseconds=1)
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    # ---------------------------------------------------------------- retrieval
    positives = (
        events.filter(pc.is_in(events["kind"], pa.array(POSITIVE_KINDS)))
        .select(["user_id", "item_id", "timestamp"])
        .to_pandas()
    )
    if champion is not None:
        ids = json.loads((champion / "retriever" / "ids.json").read_text())
        user_ids, item_ids = list(ids["users"]), list(ids["items"])
    else:
        item_ids = list(catalog)
        user_ids = sorted(set(joined["user_id"]) | set(positives["user_id"]))
    user_index = {u: n for n, u in enumerate(user_ids)}
    item_index = {i: n for n, i in enumerate(item_ids)}
    positives = positives[positives["user_id"].isin(user_index) & positives["item_id"].isin(item_index)]
    positives = positives.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "item_id"])
    if len(positives) < 20:
        raise RecstackError(f"{len(positives)} positive engagements: too few to train retrieval")
    cut = int(len(positives) * 0.9)
    encoded = pd.DataFrame(
        {"user_id": positives["user_id"].map(user_index), "item_id": positives["item_id"].map(item_index)}
    )
    parts = [
        Interactions.from_indices(p, len(user_ids), len(item_ids))
        for p in (encoded.iloc[:cut], encoded.iloc[cut:])
    ]
    warm = None
    if champion is not None:
        warm = torch.load(champion / "retriever" / "model.pt", map_location="cpu", weights_only=True)
    tower = train_two_tower(
        parts[0],
        parts[1],
        parts[1],
        settings,
        run_name="feed_two_tower",
        mask_validation=False,
        warm_start=warm,
    )
    model: TwoTower = tower.model  # type: ignore[assignment]
    vectors = item_vectors(model, settings.compute)  # the item tower over the catalog (a batch job)
    retriever = TwoTowerRetriever.build(
        model, user_ids, item_ids, settings.retrieval.index, settings.two_tower.history, vectors
    )
    retriever.save(folder / "retriever")
    np.save(folder / "item_vectors.npy", vectors)
    source_report = train_sources(settings, parts[0], parts[1], user_ids, folder / "sources")

    check_stop()  # a Ctrl-C or SIGTERM during the sources (LightGBM, EASE^R do not look)
    # ---------------------------------------------------------------- ranking rows and features
    scores = _tower_scores(retriever, vectors, joined, tower.histories)
    if on_ray:  # point-in-time features as Ray Data jobs over the log's files
        from recstack.scale.data import materialize_on_ray

        offline = materialize_on_ray(settings, feature_rows(joined), features, before=end)
        add_feature_columns(joined, None, features, retriever, vectors, scores, offline)
    else:
        history = events if start is None else log.table(end=end)  # windows reach back before start
        add_feature_columns(joined, history, features, retriever, vectors, scores)
    mixed = mixed_sources(joined, settings.train.mixed_ctr_factor)
    if mixed:
        logger.warning("%s", mixed)
    train, valid, holdout = split_holdout(joined, settings.train.holdout)
    categorical, dense = ranker_inputs(features)
    tasks, left_out = usable_tasks(train, list(cfg.tasks))
    for task, why in left_out.items():
        logger.warning("task '%s' is left out of the ranker: its label has %s", task, why)
    if not tasks:
        raise RecstackError(
            f"no task of [ranking] tasks {list(cfg.tasks)} has both classes in the training window "
            f"({'; '.join(f'{t}: {w}' for t, w in left_out.items())})"
        )
    unweighted = {t: w for t, w in settings.serving.value_weights.items() if t in left_out}
    if unweighted:
        logger.warning("[serving] value_weights %s name tasks left out: their terms are 0", unweighted)
    settings = _with_ranking(settings, tasks={t: cfg.tasks[t] for t in tasks})

    position = "position" if cfg.position is not PositionCorrection.none else None
    weight = None
    if cfg.position is PositionCorrection.ips:
        propensity = position_propensities(train["position"].to_numpy(), train["click"].to_numpy())
        ips = 1.0 / propensity[np.minimum(train["position"].to_numpy(), len(propensity) - 1)]
        clipped = np.minimum(ips, cfg.ips_max_weight)
        train = train.assign(ips_weight=np.where(train["click"].to_numpy() > 0, clipped, 1.0))
        weight = "ips_weight"
    check_stop()
    heavy = make_ranker(settings, categorical, dense, position, weight, run_name="feed_heavy_ranker")
    heavy.fit(train, valid, warm_start=_warm_folder(champion, "heavy", cfg.model.value, tasks))
    heavy.export(folder / "heavy")
    p_valid, p_hold = heavy.predict_proba(valid), heavy.predict_proba(holdout)
    calibration: dict[str, Any] = {}
    for t, task in enumerate(tasks):
        fitted = fit_calibration(cfg.calibration, p_valid[:, t], valid[task].to_numpy())
        if fitted is not None:
            calibration[task] = fitted
    (folder / "calibration.json").write_text(json.dumps(calibration))
    _save_reference(settings, features, tasks, calibration, valid, holdout, p_valid, p_hold, folder)
    metrics = holdout_metrics(holdout, p_hold, tasks)
    if champion is not None:  # the champion on this same holdout, for the promotion gate
        baseline = load_ranker(champion / "heavy")
        for key, value in holdout_metrics(holdout, score_frame(baseline, holdout), baseline.tasks).items():
            metrics[f"baseline_{key}"] = value
        if champion_version is not None:
            metrics["baseline_of"] = float(champion_version)

    # ---------------------------------------------------------------- light ranker (distilled)
    if cfg.light is not LightRankerKind.none:
        _fit_light(
            settings, heavy, train, valid, holdout, p_valid, p_hold, features, folder, champion, metrics
        )

    rows = {"train": len(train), "valid": len(valid), "holdout": len(holdout), "positives": len(positives)}
    start_iso = start.isoformat() if start else joined["timestamp"].min().isoformat()
    lineage = {
        "data_start": start_iso,
        "data_end": data_end.astimezone(UTC).isoformat(),
        "rows": rows,
        "inputs": {"categorical": categorical, "dense": dense},
        "ranking": {
            "model": cfg.model.value,
            "light": cfg.light.value,
            "calibration": cfg.calibration.value,
            "position": cfg.position.value,
        },
        "tasks_left_out": left_out,
        "warm_start": str(champion) if champion is not None else None,
        "holdout": settings.train.holdout.value,
        "mixed_sources": mixed,
    }
    meta = {
        "format": FORMAT,
        "tasks": tasks,
        "features": [f.model_dump(mode="json") for f in features],
        "metrics": metrics,
        "retrieval": {**tower.test_metrics, **source_report},
        "sources": sorted(k.value for k, q in settings.retrieval.sources.items() if q),
        **lineage,
    }
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
    return BundleReport(folder, metrics, start_iso, str(lineage["data_end"]), rows, lineage)


def _save_reference(
    settings: Settings,
    features: list[AnyFeature],
    tasks: list[str],
    calibration: dict[str, Any],
    valid: pd.DataFrame,
    holdout: pd.DataFrame,
    p_valid: np.ndarray,
    p_hold: np.ndarray,
    folder: Path,
) -> None:
    """The monitoring reference (monitoring/reference.py) of the validation and holdout rows."""
    maps = read_calibration(calibration)

    def calibrate(probs: np.ndarray) -> np.ndarray:
        out = probs.copy()
        for t, task in enumerate(tasks):
            if task in maps:
                out[:, t] = maps[task](probs[:, t])
        return out

    rows = pd.concat([valid, holdout], ignore_index=True)
    raw = np.vstack([p_valid, p_hold])
    reference = build_reference(
        rows, features, tasks, raw, calibrate, served_rows(rows), settings.monitoring, settings.train.seed
    )
    save_reference(reference, folder)


def _tower_scores(
    retriever: TwoTowerRetriever, vectors: np.ndarray, frame: pd.DataFrame, histories: np.ndarray
) -> np.ndarray:
    """The two-tower score of each (user, item) row, users with their training history (serving
    uses the user's recent engagements); unknown pairs score 0."""
    users = frame["user_id"].to_numpy()
    items = frame["item_id"].map(retriever.item_index).to_numpy(np.float64)
    out = np.zeros(len(frame))
    unique_users = pd.unique(users)
    known_users = [u for u in unique_users if u in retriever.user_index]
    if not known_users:
        return out
    index = np.array([retriever.user_index[u] for u in known_users], dtype=np.int64)
    user_vectors = retriever.towers.user(index, histories[index])
    row_of = {u: n for n, u in enumerate(known_users)}
    rows = np.array([row_of.get(u, -1) for u in users])
    ok = (rows >= 0) & ~np.isnan(items)
    out[ok] = (user_vectors[rows[ok]] * vectors[items[ok].astype(np.int64)]).sum(axis=1)
    return out


def feature_rows(joined: pd.DataFrame) -> pa.Table:
    """The columns of the impressions that ``materialize`` reads."""
    return pa.table(
        {
            "timestamp": pa.array(joined["timestamp"]),
            "user_id": joined["user_id"].astype(str).tolist(),
            "item_id": joined["item_id"].astype(str).tolist(),
            "surface": joined["surface"].tolist(),
            "context": joined["context"].tolist(),
        }
    )


def add_feature_columns(
    joined: pd.DataFrame,
    history: pa.Table | None,
    features: Sequence[AnyFeature],
    retriever: TwoTowerRetriever,
    vectors: np.ndarray,
    retrieval_scores: np.ndarray,
    offline: pa.Table | None = None,
) -> None:
    """Add one column per feature to the impressions in ``joined`` (in place): the value serving
    logged with the impression where it has one, else the offline point-in-time value over
    ``history`` (events before each impression), ``retrieval_scores`` (N,) for the retrieval score
    and each last-N sequence as the candidate's similarity to those items' ``vectors``.
    Categorical values become the strings of their bucket codes. ``offline``: that
    materialization when the caller ran it (a Ray job); else it is computed here from ``history``."""
    if offline is None:
        if history is None:
            raise ValueError("add_feature_columns needs the history or its materialization")
        offline = materialize(history, feature_rows(joined), features)
    for f in features:
        if isinstance(f, RetrievalScore):
            computed = np.asarray(retrieval_scores, dtype=np.float64)
        elif isinstance(f, LastN):
            computed = _sequence_similarity(offline.column(f.name).to_pylist(), joined, retriever, vectors)
        else:
            computed = offline.column(f.name).to_numpy(zero_copy_only=False).astype(np.float64)
        logged = joined["logged"].map(lambda values, n=f.name: values.get(n, np.nan)).to_numpy(np.float64)
        value = np.where(np.isnan(logged), computed, logged)
        joined[f.name] = categorical_text(value) if is_categorical(f) else value


def _sequence_similarity(
    sequences: list[list[str]], joined: pd.DataFrame, retriever: TwoTowerRetriever, vectors: np.ndarray
) -> np.ndarray:
    """(N,) each row's item vector against the mean vector of its last-N items (0 where unknown)."""
    index = retriever.item_index
    out = np.zeros(len(joined))
    for n, (item, sequence) in enumerate(zip(joined["item_id"], sequences, strict=True)):
        row = index.get(item)
        rows = [index[i] for i in sequence if i in index]
        if row is not None and rows:
            out[n] = history_similarity(vectors[[row]], vectors[rows])[0]
    return out


def _top_k_of_requests(frame: pd.DataFrame, scores: np.ndarray, k: int) -> pd.Series:
    return pd.Series(top_k_labels(frame["request_id"].to_numpy(), scores, k), index=frame.index)


def _fit_light(
    settings: Settings,
    heavy: NeuralRanker | PerTaskTrainer,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    holdout: pd.DataFrame,
    p_valid: np.ndarray,
    p_hold: np.ndarray,
    features: list[AnyFeature],
    folder: Path,
    champion: Path | None,
    metrics: dict[str, float],
) -> None:
    """Distil the light ranker from the heavy one's first head (which candidates it puts in its top
    ``light_top_k`` of each request) into ``folder/light``; skipped when the labels have one class."""
    k = settings.ranking.light_top_k
    light_settings = _light_settings(settings)
    top = _top_k_of_requests(train, heavy.predict_proba(train)[:, 0], k)
    top_valid = _top_k_of_requests(valid, p_valid[:, 0], k)
    if top.nunique() < 2 or top_valid.nunique() < 2:
        logger.warning(
            "the light ranker is not trained: every candidate of a request is in the heavy top %d", k
        )
        return
    categorical, dense = ranker_inputs(features)  # the light one: the item's, not the user's or context
    item_level = {f.name for f in features if isinstance(f, Attribute) and f.entity == "item"}
    light = make_ranker(
        light_settings,
        [c for c in categorical if c == "item_id" or c in item_level],
        dense,
        run_name="feed_light_ranker",
    )
    warm = _warm_folder(champion, "light", light_settings.ranking.model.value, ["heavy_top_k"])
    light.fit(train.assign(heavy_top_k=top), valid.assign(heavy_top_k=top_valid), warm_start=warm)
    light.export(folder / "light")
    top_hold = _top_k_of_requests(holdout, p_hold[:, 0], k)
    if top_hold.nunique() == 2:
        metrics["light_auc_heavy_top_k"] = auc(
            top_hold.to_numpy(np.float64), light.predict_proba(holdout)[:, 0]
        )
