"""The feed's ranker inputs: the ``[[features]]`` definitions, one column each, plus the two ids.

``ranker_inputs`` names the columns: categorical ``user_id`` and ``item_id`` (embedded by the
neural rankers, one-hot by LR, native categories by GBDT), then every categorical definition
(attributes hashed into buckets, request context), then every dense one (counters, rates,
recencies, dense attributes, ``item_age``, ``retrieval_score``, and each ``last_n`` sequence as the
similarity of the candidate to the mean of those items in the item tower's space).

Serving reads the values from the live state (``ColumnarFeatures``) and logs them with each
impression (``logged_values``); training reads the logged values where an impression has them and the
offline point-in-time values (``offline.materialize``) of the same definitions elsewhere. Categorical
feature values are bucket codes; the ranker's encoder sees them as the strings of those codes.

``ColumnarEncoder`` applies a fitted encoder to arrays: the item-id codes are computed once for the
catalog and extended as it grows, the user id is one lookup, a categorical feature's codes go
through a table over its buckets; dense values are standardized as the encoder does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from recstack.features.definitions import Attribute, Context, TextEmbedding
from recstack.features.online import AnyFeature
from recstack.features.tabular import Encoded, TabularEncoder

ID_COLUMNS = ("user_id", "item_id")


def is_categorical(feature: AnyFeature) -> bool:
    return isinstance(feature, Context) or (isinstance(feature, Attribute) and feature.kind == "categorical")


def ranker_inputs(features: Sequence[AnyFeature]) -> tuple[list[str], list[str]]:
    """(categorical, dense) column names the feed's rankers read, in this order."""
    categorical = [*ID_COLUMNS, *(f.name for f in features if is_categorical(f))]
    dense = [f.name for f in features if not is_categorical(f) and not isinstance(f, TextEmbedding)]
    return categorical, dense


def history_similarity(candidates: np.ndarray, history: np.ndarray) -> np.ndarray:
    """(N, D) candidate vectors, (H, D) vectors of the user's last-N items -> (N,) dot products
    with the history's mean (0 with no history)."""
    if not len(history):
        return np.zeros(len(candidates))
    out: np.ndarray = (candidates @ history.mean(axis=0)).astype(np.float64)
    return out


def categorical_text(values: np.ndarray) -> np.ndarray:
    """Bucket codes (floats) -> the strings the encoder's vocabulary holds."""
    return np.asarray(values, dtype=np.int64).astype(str).astype(object)


def logged_values(names: Sequence[str], values: dict[str, np.ndarray]) -> list[str]:
    """One JSON object per row with the named feature values (exact: repr of a float is JSON, and
    non-finite values are written as JSON allows Python to read them back)."""
    if not names:
        return ["{}"] * (len(next(iter(values.values()))) if values else 0)
    matrix = np.column_stack([np.asarray(values[n], dtype=np.float64) for n in names])
    if not np.isfinite(matrix).all():
        return [json.dumps(dict(zip(names, row, strict=True))) for row in matrix.tolist()]
    template = "{" + ", ".join(f'"{n}": %r' for n in names) + "}"
    return [template % tuple(row) for row in matrix.tolist()]


class ColumnarEncoder:
    """A ranker's TabularEncoder applied column-wise: ``encode(items, user_id, values)`` equals
    ``encoder.transform`` of the frame with those columns (tested). ``constants``: columns with one
    value at serving (a position feature takes the top slot's)."""

    def __init__(self, encoder: TabularEncoder, constants: dict[str, str] | None = None) -> None:
        self.encoder = encoder
        self.constants = constants or {}
        self.item_codes = np.zeros(0, dtype=np.int64)
        self.users = {v: n + 1 for n, v in enumerate(encoder.vocab.get("user_id", []))}
        self.constant_codes = {
            c: int(encoder._lookup(c).get_indexer(pd.Index([v], dtype=object))[0] + 1)
            for c, v in self.constants.items()
            if c in encoder.categorical
        }
        # a categorical feature's bucket code -> its encoder index (0: unseen), as a table
        self.tables: dict[str, np.ndarray] = {}
        for column in encoder.categorical:
            if column in ID_COLUMNS or column in self.constant_codes:
                continue
            vocab = encoder.vocab[column]
            codes = np.array([int(float(v)) for v in vocab], dtype=np.int64)
            table = np.zeros(int(codes.max()) + 2 if len(codes) else 1, dtype=np.int64)
            table[codes] = np.arange(1, len(codes) + 1)
            self.tables[column] = table
        self.mean = np.array([encoder.mean[c] for c in encoder.dense])
        self.std = np.array([encoder.std[c] for c in encoder.dense])

    def refresh(self, item_ids: Sequence[str]) -> None:
        """Extend the item-id codes to the catalog's items (``item_ids``: the catalog, in order)."""
        if "item_id" in self.encoder.categorical and len(self.item_codes) < len(item_ids):
            new = list(item_ids[len(self.item_codes) :])
            codes = self.encoder._lookup("item_id").get_indexer(pd.Index(new, dtype=object)) + 1
            self.item_codes = np.concatenate([self.item_codes, codes.astype(np.int64)])

    def encode(self, items: np.ndarray, user_id: str | None, values: dict[str, np.ndarray]) -> Encoded:
        """items: (N,) catalog indices; values: feature name -> (N,) (categorical ones as codes)."""
        n = len(items)
        sparse = np.zeros((n, len(self.encoder.categorical)), dtype=np.int64)
        for j, column in enumerate(self.encoder.categorical):
            if column == "item_id":
                sparse[:, j] = self.item_codes[items]
            elif column == "user_id":
                sparse[:, j] = self.users.get(user_id or "", 0)
            elif column in self.constant_codes:
                sparse[:, j] = self.constant_codes[column]
            else:
                table = self.tables[column]
                codes = np.asarray(values[column], dtype=np.int64)
                inside = (codes >= 0) & (codes < len(table))
                sparse[:, j] = np.where(inside, table[np.where(inside, codes, 0)], 0)
        dense = (
            np.column_stack([np.asarray(values[c], dtype=np.float64) for c in self.encoder.dense])
            if self.encoder.dense
            else np.zeros((n, 0))
        )
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = np.clip((dense - self.mean) / self.std, -self.encoder.clip, self.encoder.clip)
        scaled = np.where(np.isfinite(dense), scaled, 0.0).astype(np.float32)
        return Encoded(sparse, scaled)
