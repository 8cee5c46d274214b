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
from typing import Any

import numpy as np
import pandas as pd

from recstack.features.definitions import US

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
    columns |= dense_values(retrieval_score, created_us, now_us, clicks, impressions)
    return pd.DataFrame(columns)


def counts_as_of(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(clicks, impressions) of each row's item before it, in row order: what serving's counters
    held when the impression was served (the frame holds impressions with a ``timestamp`` and a
    0/1 ``click``)."""
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    ordered = frame.iloc[order]
    grouped = ordered.groupby("item_id", sort=False)
    clicks, shown = np.empty(len(frame)), np.empty(len(frame))
    shown[order] = grouped.cumcount().to_numpy(np.float64)
    clicks[order] = (grouped["click"].cumsum() - ordered["click"]).to_numpy(np.float64)
    return clicks, shown


ITEM_LEVEL = ("item_id", "creator_id")  # plus the catalog's item fields
REQUEST_LEVEL = ("user_id", "surface", "device")


class ColumnarEncoder:
    """A ranker's TabularEncoder applied column-wise to catalog arrays, without building a frame.

    Item-level categorical codes (item, creator, item fields) are computed once for the whole
    catalog and extended as it grows; request-level ones (user, surface, device) are one lookup per
    request; dense values are standardized as the encoder does (non-finite -> the training mean,
    clipped at ``clip`` sd). ``encode`` equals ``encoder.transform(serving_frame(...))`` (tested).
    ``constants``: columns with one value at serving (a position feature takes the top slot's).
    """

    def __init__(
        self, encoder: Any, item_fields: Sequence[str], constants: dict[str, str] | None = None
    ) -> None:
        self.encoder = encoder
        self.item_columns = set(ITEM_LEVEL) | set(item_fields)
        self.constants = constants or {}
        unknown = set(encoder.categorical) - self.item_columns - set(REQUEST_LEVEL) - set(self.constants)
        if unknown:
            raise ValueError(
                f"the ranker reads categorical columns serving does not compute: {sorted(unknown)}"
            )
        self.codes: dict[str, np.ndarray] = {
            c: np.zeros(0, dtype=np.int64) for c in encoder.categorical if c in self.item_columns
        }
        self.lookups: dict[str, dict[str, int]] = {
            c: {v: n + 1 for n, v in enumerate(encoder.vocab[c])}
            for c in encoder.categorical
            if c in REQUEST_LEVEL
        }
        self.constant_codes = {
            c: int(encoder._lookup(c).get_indexer(pd.Index([v], dtype=object))[0] + 1)
            for c, v in self.constants.items()
            if c in encoder.categorical
        }
        self.mean = np.array([encoder.mean[c] for c in encoder.dense])
        self.std = np.array([encoder.std[c] for c in encoder.dense])

    def _raw(self, column: str, state: Any, start: int) -> list[str]:
        if column == "item_id":
            return list(state.item_ids[start:])
        if column == "creator_id":
            return [state.creators[c] for c in state.creator.values[start:]]
        return [str(v) for v in state.fields[column][start:]]

    def refresh(self, state: Any) -> None:
        for column, codes in self.codes.items():
            if len(codes) < state.n_items:
                raw = self._raw(column, state, len(codes))
                new = self.encoder._lookup(column).get_indexer(pd.Index(raw, dtype=object)) + 1
                self.codes[column] = np.concatenate([codes, new.astype(np.int64)])

    def encode(self, items: np.ndarray, request_values: dict[str, str], dense: dict[str, np.ndarray]) -> Any:
        from recstack.features.tabular import Encoded

        n = len(items)
        sparse = np.zeros((n, len(self.encoder.categorical)), dtype=np.int64)
        for j, column in enumerate(self.encoder.categorical):
            if column in self.codes:
                sparse[:, j] = self.codes[column][items]
            elif column in self.constant_codes:
                sparse[:, j] = self.constant_codes[column]
            else:
                sparse[:, j] = self.lookups[column].get(request_values.get(column, ""), 0)
        values = (
            np.column_stack([dense[c] for c in self.encoder.dense])
            if self.encoder.dense
            else np.zeros((n, 0))
        )
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = np.clip((values - self.mean) / self.std, -self.encoder.clip, self.encoder.clip)
        scaled = np.where(np.isfinite(values), scaled, 0.0).astype(np.float32)
        return Encoded(sparse, scaled)


def dense_values(
    scores: np.ndarray,
    created_us: np.ndarray,
    now_us: int | np.ndarray,
    clicks: np.ndarray,
    impressions: np.ndarray,
) -> dict[str, np.ndarray]:
    """The dense features as arrays, the one definition serving and training share (``now_us``: the
    request time, or each training row's impression time)."""
    return {
        "retrieval_score": scores.astype(np.float64),
        "age_h": (now_us - created_us) / (3600 * US),
        "item_ctr": smoothed_ctr(clicks, impressions),
    }
