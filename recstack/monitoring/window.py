"""One window of the serving log, as the checks read it: the impressions shown in [start, end), each
with its outcome (the engagements it caused, joined within the attribution window, which may end
after ``end``), the model version that served it, the feature values serving logged and what
serving knew of it (``serving``: predictions, source, latencies)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from recstack.events.base import EventLog
from recstack.events.join import join_engagements


@dataclass
class Window:
    start: datetime
    end: datetime
    settled_end: datetime  # impressions before this have had their whole attribution window
    impressions: pd.DataFrame  # one row per impression (the join's columns), plus version / logged / serving
    log_events: int  # events of every kind timed in [start, end)

    @property
    def settled(self) -> pd.DataFrame:
        """The impressions whose outcomes are all in (shown before ``settled_end``)."""
        frame = self.impressions
        return frame[frame["timestamp"] < pd.Timestamp(self.settled_end)]

    def of_version(self, version: str) -> Window:
        frame = self.impressions
        return Window(
            self.start,
            self.end,
            self.settled_end,
            frame[frame["version"] == version].reset_index(drop=True),
            self.log_events,
        )

    def versions(self) -> list[str]:
        counts = self.impressions["version"].value_counts()
        return [str(v) for v in counts.index if v]


def _json(text: object) -> dict[str, object]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def read_window(log: EventLog, start: datetime, end: datetime, attribution_s: float, now: datetime) -> Window:
    """The window [start, end) of ``log``; outcomes are read up to ``end`` + the attribution window,
    and impressions count as settled when shown at least ``attribution_s`` before ``now``."""
    reach = end + timedelta(seconds=attribution_s)
    events = log.table(start=start, end=reach)
    joined = join_engagements(events, attribution_s).table.to_pandas()
    frame = joined[joined["timestamp"] < pd.Timestamp(end)].reset_index(drop=True)
    frame["version"] = [str(_json(v).get("feed", "")) for v in frame["model_versions"]]
    frame["logged"] = [_json(v) for v in frame["features"]]
    frame["serving_info"] = [_json(v) for v in frame["serving"]]
    stamps = events["timestamp"].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    inside = int(np.sum(stamps < np.datetime64(end.astimezone(UTC).replace(tzinfo=None), "us")))
    settled_end = min(end, now - timedelta(seconds=attribution_s))
    return Window(start, end, settled_end, frame, inside)
