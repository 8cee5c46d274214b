"""``recstack evaluate``: the champion and the challenger side by side on one holdout of the log.

The holdout is the last ``holdout`` share of the log's impressions by time (or the impressions from
``since``); everything before its first impression is the past both bundles may see.

- Ranking, per task head: AUC, GAUC (per user), logloss, normalized entropy and ECE of the
  calibrated probabilities, over the holdout impressions labelled by what they caused. Feature
  values are the ones serving logged with each impression, else the offline point-in-time values
  of the bundle's ``[[features]]`` (as training reads them); a retrieval score serving did not log
  is the towers' score with the user's positive engagements before the holdout.
- Retrieval, per candidate source of ``[retrieval] sources`` and for the merged candidate set:
  Recall and NDCG@K (``[eval] ks``) of the items each user engaged with in the holdout, from the
  live state as it stood when the holdout began (seen and hidden items excluded, as serving does),
  and the catalog coverage of the merged top K.

The table is printed, every figure is logged to MLflow (one run per bundle, tagged with its
version) and ``<state_dir>/evaluate/evaluate.png`` plots them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recstack.config import Settings
from recstack.errors import RecstackError
from recstack.eval.metrics import auc, ece, gauc, logloss, normalized_entropy, topk_metrics
from recstack.events.base import EventLog
from recstack.events.join import join_engagements
from recstack.index.sources import Request, excluded_mask, merge_arrays
from recstack.schema import POSITIVE_KINDS
from recstack.servables.bundle import ServingBundle
from recstack.servables.ranker import score_frame
from recstack.serving.graph import build_pipeline
from recstack.serving.state import FeedState
from recstack.train.feed import add_feature_columns, frame_from_join

US = 1_000_000


@dataclass
class Evaluation:
    """One bundle's figures on the holdout: ``ranking[task][metric]``, ``retrieval[source][metric]``
    (``merged`` for the merged candidate set) and the sizes it was measured on."""

    label: str
    version: str
    ranking: dict[str, dict[str, float]] = field(default_factory=dict)
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: int = 0
    users: int = 0


def holdout_start(log: EventLog, share: float, since: datetime | None) -> datetime:
    """The time the holdout starts: ``since``, else the time of the impression at the last
    ``share`` of the log's impressions."""
    if since is not None:
        return since
    times = log.table(kinds=["impression"]).column("timestamp").cast(pa.int64()).to_numpy()
    if len(times) < 100:
        raise RecstackError(f"{len(times)} impressions in the log: at least 100 are needed to evaluate")
    cut = int(np.sort(times)[int(len(times) * (1 - share))])
    moment: datetime = pd.Timestamp(cut, unit="us", tz="UTC").to_pydatetime()
    return moment


def past_state(settings: Settings, log: EventLog, start: datetime) -> FeedState:
    """The live state as it stood at ``start``: every event before it applied, as the worker does."""
    state = FeedState.for_settings(settings)
    state.apply(log.replay(end=start))
    return state


def _user_scores(bundle: ServingBundle, frame: pd.DataFrame, state: FeedState) -> np.ndarray:
    """The two-tower score of each row's (user, item) with the user's history in ``state``."""
    vectors: dict[str, np.ndarray | None] = {}
    out = np.zeros(len(frame))
    index = bundle.retriever.item_index
    for n, (user, item) in enumerate(zip(frame["user_id"], frame["item_id"], strict=True)):
        if user not in vectors:
            known = state.user(user)
            history = [state.item_ids[i] for i in known.history] if known else []
            vectors[user] = (
                bundle.retriever.user_vector(user, history) if bundle.retriever.knows(user, history) else None
            )
        vector, row = vectors[user], index.get(item)
        if vector is not None and row is not None:
            out[n] = float(bundle.vectors[row] @ vector)
    return out


def _ranking(
    bundle: ServingBundle, rows: pd.DataFrame, history: pa.Table, state: FeedState
) -> dict[str, dict[str, float]]:
    frame = rows.copy()
    add_feature_columns(
        frame, history, bundle.features, bundle.retriever, bundle.vectors, _user_scores(bundle, frame, state)
    )
    probs = bundle.calibrate(score_frame(bundle.heavy, frame))
    out: dict[str, dict[str, float]] = {}
    users = frame["user_id"].to_numpy()
    for t, task in enumerate(bundle.tasks):
        labels = frame[task].to_numpy(np.float64)
        if len(np.unique(labels)) < 2:
            continue
        p = probs[:, t]
        out[task] = {
            "auc": auc(labels, p),
            "gauc": gauc(labels, p, users),
            "logloss": logloss(labels, p),
            "ne": normalized_entropy(labels, p),
            "ece": ece(labels, p),
        }
    return out


def _retrieval(
    settings: Settings, bundle: ServingBundle, state: FeedState, truth: pd.DataFrame, start_us: int
) -> dict[str, dict[str, float]]:
    """Recall/NDCG@K per source and merged, over the users with positives in the holdout."""
    pipeline = build_pipeline(settings, bundle, state)
    pipeline.alignment.refresh(state)
    sources = pipeline.stages[0].sources  # type: ignore[attr-defined]
    ks = sorted(settings.eval.ks)
    depth = max(ks)
    truth = truth[truth["item_id"].isin(state.item_index)]
    users = sorted(truth["user_id"].unique())
    if not users:
        raise RecstackError(
            "no user engaged with a known item in the holdout: nothing to evaluate retrieval on"
        )
    user_row = {u: n for n, u in enumerate(users)}
    relevant = sp.csr_matrix(
        (
            np.ones(len(truth)),
            (truth["user_id"].map(user_row).to_numpy(), truth["item_id"].map(state.item_index).to_numpy()),
        ),
        shape=(len(users), state.n_items),
    )
    relevant.data[:] = 1.0
    lists: dict[str, np.ndarray] = {}
    for name in [*(s.name for s, _ in sources), "merged"]:
        lists[name] = np.full((len(users), depth), -1, dtype=np.int64)
    for n, user in enumerate(users):
        known = state.user(user)
        history = tuple(known.history) if known else ()
        vector = None
        names = [state.item_ids[i] for i in history]
        if bundle.retriever.knows(user, names):
            vector = bundle.retriever.user_vector(user, names)
        request = Request(None, history, start_us, state.excluded(user), user, vector)
        for source, _ in sources:
            items, _scores = source.propose(request, depth + min(len(request.exclude), 1_000))
            items = np.asarray(items, dtype=np.int64)
            items = items[~excluded_mask(request.exclude, items)][:depth]
            lists[source.name][n, : len(items)] = items
        merged = merge_arrays(sources, request).items[:depth]
        lists["merged"][n, : len(merged)] = merged
    out: dict[str, dict[str, float]] = {}
    wide = sp.hstack([relevant, sp.csr_matrix((len(users), 1))]).tocsr()  # + a padding column
    for name, top in lists.items():
        padded = np.where(top >= 0, top, state.n_items)  # the padding column no user engaged with
        sums = topk_metrics(padded, wide, np.arange(len(users)), ks)
        out[name] = {k: v / len(users) for k, v in sums.items() if k.split("@")[0] in ("recall", "ndcg")}
        shown = top[:, : min(ks)]
        out[name][f"coverage@{min(ks)}"] = float(len(np.unique(shown[shown >= 0])) / state.n_items)
    return out


def evaluate_bundles(
    settings: Settings,
    log: EventLog,
    bundles: dict[str, tuple[str, Path]],
    share: float = 0.1,
    since: datetime | None = None,
) -> list[Evaluation]:
    """Evaluate each ``label -> (version, folder)`` bundle on the same holdout."""
    if not bundles:
        raise RecstackError("no bundle to evaluate: train one first (recstack train --feed)")
    start = holdout_start(log, share, since)
    start_us = int(pd.Timestamp(start).value // 1000)
    events = log.table()
    joined = frame_from_join(join_engagements(events, settings.event_log.attribution_window_s).table)
    rows = joined[joined["timestamp_us"] >= start_us].reset_index(drop=True)
    if len(rows) < 10:
        raise RecstackError(f"{len(rows)} impressions in the holdout: too few to evaluate")
    positives = events.filter(
        pc.and_(
            pc.is_in(events["kind"], pa.array(POSITIVE_KINDS)),
            pc.greater_equal(events["timestamp"].cast(pa.int64()), start_us),
        )
    ).select(["user_id", "item_id"])
    truth = positives.to_pandas().drop_duplicates()
    state = past_state(settings, log, start)
    out = []
    for label, (version, folder) in bundles.items():
        bundle = ServingBundle.load(folder)
        result = Evaluation(label, version, rows=len(rows), users=int(truth["user_id"].nunique()))
        result.ranking = _ranking(bundle, rows, events, state)
        result.retrieval = _retrieval(settings, bundle, state, truth, start_us)
        out.append(result)
    return out


def track(settings: Settings, results: list[Evaluation]) -> None:
    """One MLflow run per bundle with every figure (when tracking is on)."""
    if not settings.tracking.enabled:
        return
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri())
    mlflow.set_experiment(settings.tracking.experiment)
    for r in results:
        with mlflow.start_run(run_name=f"evaluate_{r.label}", tags={"recstack.version": r.version}):
            metrics = {f"{task}_{k}": v for task, m in r.ranking.items() for k, v in m.items()}
            metrics |= {
                f"{source}_{k.replace('@', '_at_')}": v
                for source, m in r.retrieval.items()
                for k, v in m.items()
            }
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
            mlflow.log_params({"label": r.label, "rows": r.rows, "users": r.users})


def plot(results: list[Evaluation], path: Path) -> Path:
    """Bars: AUC per task and Recall@K per source, one colour per bundle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(results), 1)
    for n, r in enumerate(results):
        tasks = list(r.ranking)
        axes[0].bar(
            np.arange(len(tasks)) + n * width,
            [r.ranking[t]["auc"] for t in tasks],
            width,
            label=f"{r.label} v{r.version}",
        )
        axes[0].set_xticks(np.arange(len(tasks)) + width * (len(results) - 1) / 2, tasks)
        sources = list(r.retrieval)
        key = next(k for k in r.retrieval[sources[0]] if k.startswith("recall@"))
        axes[1].bar(
            np.arange(len(sources)) + n * width,
            [r.retrieval[s][key] for s in sources],
            width,
            label=f"{r.label} v{r.version}",
        )
        axes[1].set_xticks(np.arange(len(sources)) + width * (len(results) - 1) / 2, sources, rotation=30)
        axes[1].set_ylabel(key)
    axes[0].set_ylabel("holdout AUC (calibrated heads)")
    axes[0].axhline(0.5, color="grey", linewidth=0.8)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def registry_bundles(settings: Settings, versions: list[str] | None = None) -> dict[str, tuple[str, Path]]:
    """``champion`` and ``challenger`` of the registry (or the given versions), fetched."""
    from recstack.registry import Registry

    registry = Registry(settings)
    picked: dict[str, str] = {}
    if versions:
        picked = {f"v{v}": v for v in versions}
    else:
        for alias in ("champion", "challenger"):
            version = registry.alias(alias)
            if version is not None and version not in picked.values():
                picked[alias] = version
    return {label: (version, registry.fetch(version)) for label, version in picked.items()}


def describe(results: list[Evaluation]) -> Any:
    """A rich table of every figure, one column per bundle."""
    from rich.table import Table

    table = Table("figure", *(f"{r.label} (v{r.version})" for r in results))
    keys: list[tuple[str, str, str]] = []
    for r in results:
        for task, m in r.ranking.items():
            keys += [("ranking", task, k) for k in m if ("ranking", task, k) not in keys]
        for source, m in r.retrieval.items():
            keys += [("retrieval", source, k) for k in m if ("retrieval", source, k) not in keys]
    for part, name, metric in keys:
        cells = []
        for r in results:
            value = (r.ranking if part == "ranking" else r.retrieval).get(name, {}).get(metric)
            cells.append("-" if value is None else f"{value:.4f}")
        table.add_row(f"{name} {metric}", *cells)
    return table
