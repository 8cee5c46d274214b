"""Readers on the real data sets (counts from each PROVENANCE.md) and on malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recstack.data import DATASETS, dataset, load
from recstack.data.readers import (
    read_bars_ml1m,
    read_frappe,
    read_hate_speech,
    read_jsonl_events,
    read_movielens_1m,
    read_movielens_100k,
    read_open_bandit,
    read_parquet_events,
    read_recbole_atomic,
)
from recstack.errors import DataFormatError, DatasetNotFoundError, RecstackError
from recstack.schema import events_to_table, parse_event

from ..conftest import data_path


def test_movielens_100k() -> None:
    ml = read_movielens_100k(data_path("movielens-100k"))
    assert len(ml.ratings) == 100_000
    assert ml.ratings["user_id"].nunique() == 943 and ml.ratings["item_id"].nunique() == 1682
    assert ml.ratings.groupby("user_id").size().min() >= 20
    assert ml.items.loc[ml.items["item_id"] == 1, "genres"].item() == ["Animation", "Children's", "Comedy"]
    assert set(ml.users.columns) == {"user_id", "age", "gender", "occupation", "zip"}


def test_movielens_1m_users_and_movies() -> None:
    ml = read_movielens_1m(data_path("movielens-1m"))
    assert (len(ml.users), len(ml.movies)) == (6040, 3883)
    assert ml.movies.iloc[0]["genres"] == ["Animation", "Children's", "Comedy"]


@pytest.mark.slow
def test_bars_ml1m_split() -> None:
    bars = read_bars_ml1m(data_path("movielens1m_m1"))
    assert (bars.n_users, bars.n_items) == (6022, 3043)
    assert (len(bars.train), len(bars.validation), len(bars.test)) == (796_244, 99_455, 99_455)


def test_open_bandit_all_logs() -> None:
    folder = data_path("open_bandit_dataset_small")
    for policy in ("random", "bts"):
        obd = read_open_bandit(folder, policy, "all")
        assert len(obd.log) == 10_000 and obd.n_items == 80 and obd.n_positions == 3
        assert obd.log["propensity_score"].min() > 0 and obd.log["propensity_score"].max() <= 1
    assert read_open_bandit(folder, "random", "all").summary()["clicks"] == 38
    with pytest.raises(ValueError, match="policy"):
        read_open_bandit(folder, "greedy", "all")


def test_frappe() -> None:
    frappe = read_frappe(data_path("frappe_x1_partial"))
    assert (len(frappe.valid), len(frappe.test)) == (57_722, 28_860)
    assert set(frappe.valid["label"].unique()) == {0, 1}


def test_hate_speech() -> None:
    hs = read_hate_speech(data_path("davidson_hate_offensive"))
    assert hs.summary() == {"tweets": 24_783, "hate": 1_430, "offensive": 19_190, "neither": 4_163}


def test_every_registered_dataset_loads_and_summarizes() -> None:
    data_path("movielens-100k")
    for name in DATASETS:
        if name == "movielens1m_m1":
            continue  # covered by the slow test
        assert load(name, data_path(name).parent).summary()


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(RecstackError, match="known: movielens-100k"):
        dataset("netflix")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        read_movielens_100k(tmp_path / "nope")


def _ml100k_copy(tmp_path: Path, u_data: str) -> Path:
    (tmp_path / "u.data").write_text(u_data)
    (tmp_path / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["1"]) + "\n"
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    return tmp_path


def test_malformed_line_names_file_line_and_reason(tmp_path: Path) -> None:
    folder = _ml100k_copy(tmp_path, "1\t1\t5\t881250949\n1\t2\tfive\t881250950\n")
    with pytest.raises(DataFormatError, match=r"u\.data:2: column 'rating': 'five'"):
        read_movielens_100k(folder)


def test_wrong_field_count(tmp_path: Path) -> None:
    folder = _ml100k_copy(tmp_path, "1\t1\t5\n")
    with pytest.raises(DataFormatError, match=r"u\.data:1: expected 4 fields"):
        read_movielens_100k(folder)


def test_out_of_range_rating(tmp_path: Path) -> None:
    folder = _ml100k_copy(tmp_path, "1\t1\t9\t881250949\n")
    with pytest.raises(DataFormatError, match="rating must be within"):
        read_movielens_100k(folder)


def test_bars_bad_json(tmp_path: Path) -> None:
    for name in ("train", "validation", "test"):
        (tmp_path / f"{name}_data.json").write_text("[[0, 1], [2]]")
    (tmp_path / "test_data.json").write_text("[[0, 1], [2, -1]]")
    with pytest.raises(DataFormatError, match="user 1: expected a list of non-negative"):
        read_bars_ml1m(tmp_path)
    (tmp_path / "test_data.json").write_text("[[0, 1],\n [2")
    with pytest.raises(DataFormatError, match=r"test_data\.json:2: invalid JSON"):
        read_bars_ml1m(tmp_path)


def test_libsvm_bad_line(tmp_path: Path) -> None:
    line = "1 " + " ".join(f"{i}:1" for i in range(10))
    (tmp_path / "valid.libsvm").write_text(line + "\n" + "1 2:1 3:1\n")
    (tmp_path / "test.libsvm").write_text(line + "\n")
    with pytest.raises(DataFormatError, match=r"valid\.libsvm:2: expected a label and 10 features, found 2"):
        read_frappe(tmp_path)


def test_obd_bad_click(tmp_path: Path) -> None:
    base = tmp_path / "random" / "all"
    base.mkdir(parents=True)
    (base / "all.csv").write_text(
        ",timestamp,item_id,position,click,propensity_score\n"
        "0,2019-11-24 00:00:34+00:00,1,1,0,0.0125\n1,2019-11-24 00:00:35+00:00,1,2,7,0.0125\n"
    )
    (base / "item_context.csv").write_text(",item_id,item_feature_0\n0,1,0.5\n")
    with pytest.raises(DataFormatError, match=r"all\.csv:3: column 'click' has invalid value 7"):
        read_open_bandit(tmp_path)


def test_recbole_atomic(tmp_path: Path) -> None:
    path = tmp_path / "ml.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n")
    frame = read_recbole_atomic(path)
    assert frame.to_dict("records") == [
        {"user_id": "196", "item_id": "242", "rating": 3.0, "timestamp": 881250949.0}
    ]
    path.write_text("user_id:token\titem_id:blob\n")
    with pytest.raises(DataFormatError, match="type must be one of"):
        read_recbole_atomic(path)


def test_jsonl_events(tmp_path: Path) -> None:
    good = {"event_id": "a", "kind": "click", "timestamp": 1, "user_id": "u", "item_id": "i"}
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "event_id": "b"}) + "\n")
    assert [e.event_id for e in read_jsonl_events(path)] == ["a", "b"]
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(DataFormatError, match=r"events\.jsonl:2: invalid JSON"):
        read_jsonl_events(path)
    path.write_text(json.dumps({**good, "kind": "purchase"}) + "\n")
    with pytest.raises(DataFormatError, match=r"events\.jsonl:1: .*field 'kind'"):
        read_jsonl_events(path)


def test_parquet_events(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    event = parse_event({"event_id": "a", "kind": "click", "timestamp": 1, "user_id": "u", "item_id": "i"})
    pq.write_table(
        events_to_table([event]).select(["event_id", "kind", "timestamp", "user_id", "item_id"]),
        tmp_path / "e.parquet",
    )
    assert read_parquet_events(tmp_path / "e.parquet").column("user_id").to_pylist() == ["u"]
    pq.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match="missing required columns"):
        read_parquet_events(tmp_path / "bad.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(DataFormatError, match="not a readable Parquet"):
        read_parquet_events(tmp_path / "junk.parquet")
