"""``recstack experiment ope``: a model version's click rate estimated on the logs another version
served, before it gets any traffic.

The logged requests of a window (impressions that carry their ``propensity``, i.e. served by
recstack) are replayed, in time order, through the candidate model's full pipeline (the configured
sources, rankers, value model, re-rank and exploration) on the live state rebuilt from the log as
the worker keeps it: every event before each request applied, nothing after it. Each logged
impression (request r, slot k, item a, click y, propensity p) then
gives the per-row terms of ``recstack.eval.ope``:

    w  = 1[the replayed slate has a at slot k] / p       (the policy is deterministic per request)
    e  = q(the replayed slate's item at k, k)             (the direct method's value of that slot)
    qa = q(a, k)

with the reward model q(item, k) = the item's click rate in the window (shrunk to the window's
rate with a prior of 20 impressions) times slot k's click rate over the window's. IPS and SNIPS
only see the slots where the candidate agrees with what was shown (``agreement``); with
deterministic ranked slots that is all the support the logs give, and DM and DR carry the estimate
where agreement is low.

The logging version itself is replayed the same way as a check of the method: its estimates should
recover the click rate it actually had, and its agreement says how faithful the replay is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from recstack.config import Settings
from recstack.errors import RecstackError
from recstack.eval.ope import Estimate, evaluate_rows
from recstack.evaluate import past_state
from recstack.events.base import EventLog
from recstack.events.join import join_engagements
from recstack.schema import Event
from recstack.servables.bundle import ServingBundle
from recstack.serving.graph import build_pipeline
from recstack.serving.ops.base import RecRequest
from recstack.serving.state import FeedState

PRIOR_IMPRESSIONS = 20.0


@dataclass
class PolicyEstimate:
    model: str
    version: str
    agreement: float  # share of logged impressions the replayed slates reproduce
    estimates: dict[str, Estimate]


@dataclass
class OpeReport:
    logged_version: str
    requests: int
    impressions: int
    logged_ctr: float
    start: datetime
    policies: list[PolicyEstimate]


def logged_rows(log: EventLog, settings: Settings, since: datetime | None) -> pd.DataFrame:
    """The window's impressions with their click labels and propensities (served by recstack)."""
    events = log.table(start=since)
    joined = join_engagements(events, settings.event_log.attribution_window_s).table.to_pandas()
    rows = joined[joined["propensity"].notna()]
    if rows.empty:
        raise RecstackError(
            "no impressions with propensities in the log"
            + (f" since {since.isoformat()}" if since else "")
            + ": off-policy estimates need impressions served by recstack (imported or simulated "
            "history has no logging probabilities)"
        )
    return rows


def reward_model(rows: pd.DataFrame) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """q(items (n,), positions (n,)) -> (n,): shrunk item click rate x relative slot click rate."""
    overall = float(rows["click"].mean())
    by_item = rows.groupby("item_id")["click"].agg(["sum", "count"])
    item_rate = (by_item["sum"] + PRIOR_IMPRESSIONS * overall) / (by_item["count"] + PRIOR_IMPRESSIONS)
    by_pos = rows.groupby("position")["click"].agg(["sum", "count"])
    pos_rate = (by_pos["sum"] + PRIOR_IMPRESSIONS * overall) / (by_pos["count"] + PRIOR_IMPRESSIONS)
    factor = (pos_rate / overall).to_dict() if overall > 0 else {}
    rates = item_rate.to_dict()

    def q(items: np.ndarray, positions: np.ndarray) -> np.ndarray:
        base = np.array([rates.get(i, overall) for i in items.tolist()])
        out: np.ndarray = base * np.array([factor.get(int(k), 1.0) for k in positions.tolist()])
        return out

    return q


def replay(
    bundles: list[ServingBundle],
    settings: Settings,
    state: FeedState,
    window: list[Event],
    requests: pd.DataFrame,
) -> list[list[list[str]]]:
    """The slate (item ids) each bundle's pipeline serves each request (user_id, timestamp, n),
    requests in time order, with ``window``'s events (time order) applied to ``state`` up to each
    request's time, as the worker would have: per bundle, one slate per request (in ``requests``'
    order). Exploration draws are seeded per request."""
    pipelines = [build_pipeline(settings, bundle, state) for bundle in bundles]
    out: list[list[list[str]]] = [[[] for _ in range(len(requests))] for _ in bundles]
    times = [int(pd.Timestamp(t).value // 1_000) for t in requests["timestamp"]]
    applied = 0
    for n in np.argsort(times, kind="stable").tolist():
        now_us = times[n]
        upto = applied
        while upto < len(window) and int(window[upto].timestamp.timestamp() * 1_000_000) < now_us:
            upto += 1
        if upto > applied:
            state.apply(window[applied:upto])
            applied = upto
        user_id = str(requests["user_id"].iloc[n])
        user = state.user(user_id)
        for b, pipeline in enumerate(pipelines):
            request = RecRequest(
                user_id,
                int(requests["n"].iloc[n]),
                now_us,
                history=tuple(user.history) if user else (),
                exclude=state.excluded(user_id),
                rng=np.random.default_rng(n),
            )
            served = pipeline.run(request, state).candidates
            out[b][n] = [state.item_ids[i] for i in served.items.tolist()]
    return out


def off_policy(
    settings: Settings,
    log: EventLog,
    models: list[str],
    resolve: Callable[[str], tuple[str, Path]],
    since: datetime | None = None,
    max_requests: int = 2_000,
    rounds: int = 500,
    seed: int = 0,
) -> OpeReport:
    """Estimate each of ``models`` (versions or aliases) on the window's logs; the version that served
    most of them is replayed too, first, as the method's check."""
    rows = logged_rows(log, settings, since)
    versions = rows["model_versions"].map(lambda s: json.loads(s).get("feed") if s else None)
    logged_version = str(versions.mode().iloc[0]) if versions.notna().any() else "?"
    requests = (
        rows.groupby("request_id")
        .agg(user_id=("user_id", "first"), timestamp=("timestamp", "first"), n=("position", "max"))
        .assign(n=lambda f: f["n"] + 1)
    )
    if len(requests) > max_requests:
        requests = requests.sample(max_requests, random_state=seed)
    rows = rows[rows["request_id"].isin(requests.index)]
    start = pd.Timestamp(rows["timestamp"].min()).to_pydatetime()
    state = past_state(settings, log, start)
    window = sorted(log.replay(start=start), key=lambda e: e.timestamp)
    q = reward_model(rows)
    position = rows["position"].to_numpy()
    reward = rows["click"].to_numpy(np.float64)
    predicted = q(rows["item_id"].to_numpy(), position)
    report = OpeReport(logged_version, len(requests), len(rows), float(reward.mean()), start, [])
    wanted = ([logged_version] if logged_version != "?" else []) + [m for m in models if m != logged_version]
    resolved = [resolve(model) for model in wanted]
    bundles = [ServingBundle.load(folder) for _, folder in resolved]
    all_slates = replay(bundles, settings, state, window, requests)
    for model, (version, _), slates_of in zip(wanted, resolved, all_slates, strict=True):
        slates = dict(zip(requests.index, slates_of, strict=True))
        chosen = np.array(
            [
                slate[k] if k < len(slate) else None
                for slate, k in zip(rows["request_id"].map(slates), position.tolist(), strict=True)
            ],
            dtype=object,
        )
        match = chosen == rows["item_id"].to_numpy(dtype=object)
        weights = match / rows["propensity"].to_numpy(np.float64)
        # a slot the replayed slate leaves empty is worth nothing to the direct method
        filled = np.array([c is not None for c in chosen])
        expected = np.where(filled, q(np.where(filled, chosen, ""), position), 0.0)
        estimates = evaluate_rows(weights, reward, expected, predicted, rounds=rounds, seed=seed)
        report.policies.append(PolicyEstimate(model, version, float(match.mean()), estimates))
    return report
