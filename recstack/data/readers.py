"""Readers for the public data sets recstack is measured on, and for generic interaction files.

Every reader takes a path (the data are never copied into the repository), returns pandas frames
with documented columns, and fails on malformed input with DataFormatError naming the file, the line
and the reason. Each data set object has ``summary()`` for ``recstack data summary``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.errors import DataFormatError, DatasetNotFoundError, EventValidationError
from recstack.schema import EVENT_SCHEMA, Event, parse_event

Converter = Callable[[str], Any]


def _require(path: Path) -> Path:
    if not path.exists():
        raise DatasetNotFoundError(f"{path} does not exist (see `recstack data fetch --help`)")
    return path


def read_delimited(
    path: Path,
    sep: str,
    columns: Sequence[tuple[str, Converter]],
    encoding: str = "utf-8",
    header: bool = False,
) -> pd.DataFrame:
    """Parse a delimited text file line by line, converting each field; errors name file and line."""
    _require(path)
    values: list[list[Any]] = [[] for _ in columns]
    with path.open(encoding=encoding, newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if header and number == 1:
                continue
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(sep)
            if len(fields) != len(columns):
                raise DataFormatError(
                    path, number, f"expected {len(columns)} fields separated by {sep!r}, found {len(fields)}"
                )
            for slot, ((name, convert), raw) in enumerate(zip(columns, fields, strict=True)):
                try:
                    values[slot].append(convert(raw))
                except ValueError as exc:
                    raise DataFormatError(
                        path, number, f"column '{name}': {raw!r} is not valid ({exc})"
                    ) from exc
    return pd.DataFrame({name: vals for (name, _), vals in zip(columns, values, strict=True)})


def _nonneg_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _rating(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 5:
        raise ValueError("rating must be within [0, 5]")
    return value


@dataclass
class MovieLens100K:
    """GroupLens ml-100k. ratings: user_id, item_id, rating, timestamp (epoch s);
    items: item_id, title, release_date, genres (list of names); users: user_id, age, gender,
    occupation, zip."""

    ratings: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame

    def summary(self) -> dict[str, Any]:
        return _interaction_summary(self.ratings) | {
            "rating_mean": round(float(self.ratings["rating"].mean()), 4),
            "catalog_items": len(self.items),
            "registered_users": len(self.users),
        }


GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def read_movielens_100k(folder: Path) -> MovieLens100K:
    folder = _require(Path(folder))
    ratings = read_delimited(
        folder / "u.data",
        "\t",
        [("user_id", _nonneg_int), ("item_id", _nonneg_int), ("rating", _rating), ("timestamp", _nonneg_int)],
    )
    item_cols: list[tuple[str, Converter]] = [
        ("item_id", _nonneg_int),
        ("title", str),
        ("release_date", str),
        ("video_release", str),
        ("url", str),
    ]
    item_cols += [(f"g_{name}", _flag) for name in GENRES_100K]
    raw_items = read_delimited(folder / "u.item", "|", item_cols, encoding="latin-1")
    flags = raw_items[[f"g_{name}" for name in GENRES_100K]].to_numpy(dtype=bool)
    items = raw_items[["item_id", "title", "release_date"]].copy()
    items["genres"] = [[GENRES_100K[j] for j in np.flatnonzero(row)] for row in flags]
    users = read_delimited(
        folder / "u.user",
        "|",
        [("user_id", _nonneg_int), ("age", _nonneg_int), ("gender", str), ("occupation", str), ("zip", str)],
    )
    return MovieLens100K(ratings, items, users)


def _flag(raw: str) -> int:
    if raw not in ("0", "1"):
        raise ValueError("genre flag must be 0 or 1")
    return int(raw)


@dataclass
class MovieLens1M:
    """ml-1m users.dat and movies.dat (ratings.dat is not available here). users: user_id, gender,
    age, occupation, zip; movies: item_id, title, genres (list)."""

    users: pd.DataFrame
    movies: pd.DataFrame

    def summary(self) -> dict[str, Any]:
        return {
            "users": len(self.users),
            "movies": len(self.movies),
            "genres": len({g for gs in self.movies["genres"] for g in gs}),
        }


def read_movielens_1m(folder: Path) -> MovieLens1M:
    folder = _require(Path(folder))
    users = read_delimited(
        folder / "users.dat",
        "::",
        [
            ("user_id", _nonneg_int),
            ("gender", str),
            ("age", _nonneg_int),
            ("occupation", _nonneg_int),
            ("zip", str),
        ],
        encoding="latin-1",
    )
    movies = read_delimited(
        folder / "movies.dat",
        "::",
        [("item_id", _nonneg_int), ("title", str), ("genres", lambda s: s.split("|"))],
        encoding="latin-1",
    )
    return MovieLens1M(users, movies)


@dataclass
class BarsSplit:
    """The BARS/RecZoo Movielens1M_m1 matching split: implicit (user_id, item_id) pairs per file, ids
    already 0..n-1. ``n_users`` / ``n_items`` cover all three files."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    n_users: int
    n_items: int

    def summary(self) -> dict[str, Any]:
        total = len(self.train) + len(self.validation) + len(self.test)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "interactions": total,
            "density": round(total / (self.n_users * self.n_items), 5),
        }


def _read_user_lists(path: Path) -> pd.DataFrame:
    _require(path)
    try:
        lists = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, exc.lineno, f"invalid JSON: {exc.msg}") from exc
    if not isinstance(lists, list):
        raise DataFormatError(path, 1, "expected a JSON list of per-user item lists")
    users: list[int] = []
    items: list[int] = []
    for user, row in enumerate(lists):
        if not isinstance(row, list) or not all(isinstance(i, int) and i >= 0 for i in row):
            raise DataFormatError(
                path, None, f"user {user}: expected a list of non-negative integer item ids"
            )
        users.extend([user] * len(row))
        items.extend(row)
    return pd.DataFrame(
        {"user_id": np.asarray(users, dtype=np.int64), "item_id": np.asarray(items, dtype=np.int64)}
    )


def read_bars_ml1m(folder: Path) -> BarsSplit:
    folder = _require(Path(folder))
    parts = [_read_user_lists(folder / f"{name}_data.json") for name in ("train", "validation", "test")]
    n_users = max(int(p["user_id"].max()) + 1 for p in parts if len(p))
    n_items = max(int(p["item_id"].max()) + 1 for p in parts if len(p))
    train, validation, test = parts
    return BarsSplit(train, validation, test, n_users=n_users, n_items=n_items)


@dataclass
class OpenBandit:
    """One Open Bandit Dataset log (policy x campaign). log: timestamp, item_id, position (1-3),
    click, propensity_score, user_feature_0..3, user-item_affinity_*; item_context: item_id,
    item_feature_0..3."""

    policy: str
    campaign: str
    log: pd.DataFrame
    item_context: pd.DataFrame

    @property
    def n_items(self) -> int:
        return int(self.item_context["item_id"].nunique())

    @property
    def n_positions(self) -> int:
        return int(self.log["position"].nunique())

    def summary(self) -> dict[str, Any]:
        clicks = int(self.log["click"].sum())
        return {
            "policy": self.policy,
            "campaign": self.campaign,
            "impressions": len(self.log),
            "clicks": clicks,
            "ctr": round(clicks / max(len(self.log), 1), 5),
            "items": self.n_items,
            "positions": self.n_positions,
        }


OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")


def read_open_bandit(folder: Path, policy: str = "random", campaign: str = "all") -> OpenBandit:
    if policy not in OBD_POLICIES or campaign not in OBD_CAMPAIGNS:
        raise ValueError(f"policy must be one of {OBD_POLICIES}, campaign one of {OBD_CAMPAIGNS}")
    base = _require(Path(folder) / policy / campaign)
    log_path = _require(base / f"{campaign}.csv")
    log = _read_csv(log_path, ["timestamp", "item_id", "position", "click", "propensity_score"])
    log = log.drop(columns=[c for c in log.columns if c.startswith("Unnamed")])
    log["timestamp"] = pd.to_datetime(log["timestamp"], utc=True)
    for name, check in (
        ("click", log["click"].isin([0, 1])),
        ("position", log["position"].between(1, 3)),
        ("propensity_score", log["propensity_score"].between(0, 1, inclusive="right")),
    ):
        bad = np.flatnonzero(~check.to_numpy())
        if len(bad):
            row = int(bad[0])
            raise DataFormatError(
                log_path, row + 2, f"column '{name}' has invalid value {log[name].iloc[row].item()!r}"
            )
    context = _read_csv(_require(base / "item_context.csv"), ["item_id", "item_feature_0"])
    context = context.drop(columns=[c for c in context.columns if c.startswith("Unnamed")])
    return OpenBandit(policy, campaign, log, context)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataFormatError(path, None, f"cannot parse CSV: {exc}") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(path, 1, f"missing columns {missing}; found {list(frame.columns)[:12]}")
    return frame


FRAPPE_FIELDS = (
    "user",
    "item",
    "daytime",
    "weekday",
    "isweekend",
    "homework",
    "cost",
    "weather",
    "country",
    "city",
)


@dataclass
class Frappe:
    """Frappe (BARS Frappe_x1) valid and test files only. Frames: label (0/1) and one column per
    field holding the global one-hot index of its value."""

    valid: pd.DataFrame
    test: pd.DataFrame

    def summary(self) -> dict[str, Any]:
        both = pd.concat([self.valid, self.test])
        return {
            "valid": len(self.valid),
            "test": len(self.test),
            "fields": len(FRAPPE_FIELDS),
            "features": int(both[list(FRAPPE_FIELDS)].nunique().sum()),
            "positive_rate": round(float(both["label"].mean()), 4),
        }


def read_libsvm_fields(path: Path, fields: Sequence[str]) -> pd.DataFrame:
    """Read ``label idx:val ...`` lines with exactly one active index per field, in field order."""
    _require(path)
    labels: list[int] = []
    cols: list[list[int]] = [[] for _ in fields]
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(fields) + 1:
                raise DataFormatError(
                    path,
                    number,
                    f"expected a label and {len(fields)} features, found {len(parts) - 1} features",
                )
            try:
                label = int(float(parts[0]))
                indices = [int(p.split(":", 1)[0]) for p in parts[1:]]
            except ValueError as exc:
                raise DataFormatError(path, number, f"not libsvm ({exc})") from exc
            if label not in (0, 1, -1):
                raise DataFormatError(path, number, f"label must be 0/1 (or -1), found {parts[0]!r}")
            labels.append(1 if label == 1 else 0)
            for slot, index in enumerate(indices):
                cols[slot].append(index)
    frame = pd.DataFrame({name: np.asarray(c, dtype=np.int64) for name, c in zip(fields, cols, strict=True)})
    frame.insert(0, "label", np.asarray(labels, dtype=np.int8))
    return frame


def read_frappe(folder: Path) -> Frappe:
    folder = _require(Path(folder))
    return Frappe(
        read_libsvm_fields(folder / "valid.libsvm", FRAPPE_FIELDS),
        read_libsvm_fields(folder / "test.libsvm", FRAPPE_FIELDS),
    )


@dataclass
class HateSpeech:
    """Davidson et al. tweets. frame: tweet, label (0 hate, 1 offensive, 2 neither), count,
    hate_speech, offensive_language, neither (coder votes)."""

    frame: pd.DataFrame

    def summary(self) -> dict[str, Any]:
        counts = self.frame["label"].value_counts().sort_index()
        return {
            "tweets": len(self.frame),
            "hate": int(counts.get(0, 0)),
            "offensive": int(counts.get(1, 0)),
            "neither": int(counts.get(2, 0)),
        }


def read_hate_speech(folder: Path) -> HateSpeech:
    path = _require(Path(folder) / "labeled_data.csv")
    frame = _read_csv(path, ["count", "hate_speech", "offensive_language", "neither", "class", "tweet"])
    frame = frame.rename(columns={"class": "label"})
    bad = np.flatnonzero(~frame["label"].isin([0, 1, 2]).to_numpy())
    if len(bad):
        raise DataFormatError(path, None, f"record {int(bad[0])}: class must be 0, 1 or 2")
    return HateSpeech(frame[["tweet", "label", "count", "hate_speech", "offensive_language", "neither"]])


_ATOMIC_TYPES: dict[str, Converter] = {
    "token": str,
    "float": float,
    "token_seq": lambda s: s.split(" ") if s else [],
    "float_seq": lambda s: [float(x) for x in s.split(" ")] if s else [],
}


def read_recbole_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file (``.inter``, ``.user``, ``.item``): a TAB-separated header of
    ``name:type`` (token, float, token_seq, float_seq), then rows. Column names drop the type."""
    _require(path)
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    columns: list[tuple[str, Converter]] = []
    for number, spec in enumerate(header, start=1):
        name, _, kind = spec.partition(":")
        if kind not in _ATOMIC_TYPES:
            raise DataFormatError(
                path, 1, f"header field {number} {spec!r}: type must be one of {', '.join(_ATOMIC_TYPES)}"
            )
        columns.append((name, _ATOMIC_TYPES[kind]))
    return read_delimited(path, "\t", columns, header=True)


def read_jsonl_events(path: Path) -> list[Event]:
    """A JSON-lines event log in the recstack schema; the first bad line fails with its number."""
    _require(path)
    events: list[Event] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                events.append(parse_event(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, number, f"invalid JSON: {exc.msg}") from exc
            except EventValidationError as exc:
                raise DataFormatError(path, number, str(exc)) from exc
    return events


def read_parquet_events(path: Path) -> pa.Table:
    """A Parquet event log file (or folder of files) in :data:`recstack.schema.EVENT_SCHEMA`."""
    _require(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(path, None, f"not a readable Parquet file: {exc}") from exc
    missing = [n for n in ("event_id", "kind", "timestamp") if n not in table.column_names]
    if missing:
        raise DataFormatError(path, None, f"missing required columns {missing}")
    for name in EVENT_SCHEMA.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, EVENT_SCHEMA.field(name).type))
    try:
        return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataFormatError(path, None, f"columns do not match the event schema: {exc}") from exc


def _interaction_summary(frame: pd.DataFrame) -> dict[str, Any]:
    users = frame["user_id"].nunique()
    items = frame["item_id"].nunique()
    out: dict[str, Any] = {
        "interactions": len(frame),
        "users": int(users),
        "items": int(items),
        "density": round(len(frame) / max(users * items, 1), 5),
    }
    if "timestamp" in frame:
        out["time_span_days"] = round(float(frame["timestamp"].max() - frame["timestamp"].min()) / 86400, 1)
    return out
