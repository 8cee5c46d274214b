"""The ranker's features, computed one way for serving and for training.

Categorical: user_id, item_id, creator_id, surface, device and the catalog's item fields (topic by
default). Dense: ``retrieval_score`` (the two-tower dot product of user and item), ``age_h`` (item
age at the request, hours) and ``item_ctr`` (the item's smoothed click rate so far: (clicks + 1) /
(impressions + 20)). Serving logs the dense values with each impression, so training on served
traffic reads what serving saw (point-in-time correct by construction); for history without a
snapshot, :func:`training_frame` computes the same values as of each impression's time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recstack.index.sources import US

DENSE = ("retrieval_score", "age_h", "item_ctr")
CTR_PRIOR = (1.0, 20.0)  # (clicks, impressions) added to every item's counts


def categorical_columns(item_fields: Sequence[str]) -> list[str]:
    return ["user_id", "item_id", "creator_id", "surface", "device", *item_fields]


def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
    out: np.ndarray = (clicks + CTR_PRIOR[0]) / (impressions + CTR_PRIOR[1])
    return out


def serving_frame(
    user_id: str | None,
    surface: str,
    context: dict[str, str],
    item_ids: Sequence[str],
    creators: Sequence[str],
    fields: dict[str, Sequence[str]],
    retrieval_score: np.ndarray,
    created_us: np.ndarray,
    now_us: int,
    clicks: np.ndarray,
    impressions: np.ndarray,
) -> pd.DataFrame:
    """One row per candidate, the columns the ranker was trained on."""
    n = len(item_ids)
    columns: dict[str, object] = {
        "user_id": np.full(n, user_id or "", dtype=object),
        "item_id": np.asarray(item_ids, dtype=object),
        "creator_id": np.asarray(creators, dtype=object),
        "surface": np.full(n, surface, dtype=object),
        "device": np.full(n, context.get("device", ""), dtype=object),
    }
    for name, values in fields.items():
        columns[name] = np.asarray(values, dtype=object)
    columns["retrieval_score"] = retrieval_score.astype(np.float64)
    columns["age_h"] = (now_us - created_us) / (3600 * US)
    columns["item_ctr"] = smoothed_ctr(clicks, impressions)
    return pd.DataFrame(columns)


def ctr_as_of(frame: pd.DataFrame) -> np.ndarray:
    """Each impression's item_ctr from the impressions and clicks of the same item before it (the
    frame holds impressions with a ``timestamp`` and a 0/1 ``click``; the order of rows is kept)."""
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    ordered = frame.iloc[order]
    grouped = ordered.groupby("item_id", sort=False)
    shown_before = grouped.cumcount().to_numpy(np.float64)
    clicks_before = (grouped["click"].cumsum() - ordered["click"]).to_numpy(np.float64)
    out = np.empty(len(frame))
    out[order] = smoothed_ctr(clicks_before, shown_before)
    return out
