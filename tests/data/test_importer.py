"""recstack import: every format gives the same events, ids come from the rows (a re-import adds
nothing), bad lines are named once each, and items and users become upserts before the history."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recstack.cli import app
from recstack.config import ImportFormat, MappingConfig, TimeUnit
from recstack.data.importer import import_file
from recstack.events import ParquetEventLog

ROWS = [  # user, item, rating, time (s)
    ("1", "10", 5, 881_250_949),
    ("1", "11", 3, 881_250_950),
    ("2", "10", 4, 881_251_000),
    ("3", "12", 1, 881_252_000),
]


def _write(folder: Path, fmt: str) -> Path:
    header = ["user_id", "item_id", "rating", "timestamp"]
    if fmt == "csv":
        path = folder / "log.csv"
        path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in ROWS)]) + "\n")
    elif fmt == "tsv":
        path = folder / "log.tsv"
        path.write_text("\n".join(["\t".join(header), *("\t".join(map(str, r)) for r in ROWS)]) + "\n")
    elif fmt == "jsonl":
        path = folder / "log.jsonl"
        path.write_text("".join(json.dumps(dict(zip(header, r, strict=True))) + "\n" for r in ROWS))
    elif fmt == "parquet":
        path = folder / "log.parquet"
        pq.write_table(pa.table({h: [r[n] for r in ROWS] for n, h in enumerate(header)}), path)
    else:
        path = folder / "ratings.dat"
        path.write_text("".join("::".join(map(str, r)) + "\n" for r in ROWS), encoding="latin-1")
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "movielens"])
def test_every_format_gives_the_same_events_and_a_reimport_adds_nothing(tmp_path: Path, fmt: str) -> None:
    log = ParquetEventLog(tmp_path / "log")
    path = _write(tmp_path, fmt)
    summary = import_file(log, path, "interactions", MappingConfig())
    # rating >= 4 is a click, 5 a like too; every row an impression
    assert summary.events == {"impression": 4, "click": 2, "like": 1}
    assert (summary.accepted, summary.duplicates, summary.errors) == (7, 0, [])
    table = log.table().sort_by("event_id")
    clicks = table.filter(pa.compute.equal(table.column("kind"), "click"))
    assert sorted(zip(clicks["user_id"].to_pylist(), clicks["item_id"].to_pylist(), strict=True)) == [
        ("1", "10"),
        ("2", "10"),
    ]
    assert table.column("timestamp")[0].as_py().timestamp() in {r[3] for r in ROWS}
    again = import_file(log, path, "interactions", MappingConfig())
    assert (again.accepted, again.duplicates) == (0, 7) and log.count() == 7
    if fmt == "csv":  # the same rows in another format are the same events
        other = import_file(log, _write(tmp_path, "jsonl"), "interactions", MappingConfig())
        assert other.accepted == 0


def test_bad_lines_are_named_once_each_and_the_rest_is_imported(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "user_id,item_id,rating,timestamp\n"
        "1,10,5,881250949\n"
        ",10,5,881250949\n"  # line 3: no user (and more wrong: reported once)
        "1,11,abc,881250950\n"  # line 4
        "1,12,4\n"  # line 5: a field short
        "1,13,4,99999999999999\n"  # line 6: year > 9999
        "2,14,4,4102444800\n"  # line 7: 2100, past the accepted window
        "2,15,2,881250999\n"
    )
    log = ParquetEventLog(tmp_path / "log")
    summary = import_file(log, path, "interactions", MappingConfig())
    lines = [line for line, _ in summary.errors]
    assert lines == [3, 4, 5, 6, 7]
    reasons = dict(summary.errors)
    assert "'user_id'" in reasons[3] and "'rating'" in reasons[4] and "expected 4 fields" in reasons[5]
    assert "years 1 to 9999" in reasons[6] and "max_ahead_s" in reasons[7]
    users_items = set(
        zip(log.table()["user_id"].to_pylist(), log.table()["item_id"].to_pylist(), strict=True)
    )
    assert users_items == {("1", "10"), ("2", "15")}


def test_kind_column_implicit_rows_and_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    rows = [
        {"u": "a", "i": "x", "t": "2026-11-20T10:00:00Z", "k": "view"},
        {"u": "a", "i": "x", "t": "2026-11-20T10:00:05Z", "k": "like"},
        {"u": "b", "i": "y", "t": "2026-11-20T11:00:00", "k": "fly"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping = MappingConfig(user="u", item="i", timestamp="t", time_unit=TimeUnit.iso, kind="k", rating=None)
    log = ParquetEventLog(tmp_path / "log")
    summary = import_file(log, path, "interactions", mapping, ImportFormat.jsonl)
    assert summary.events == {"impression": 2, "like": 1} and [line for line, _ in summary.errors] == [3]
    implicit = MappingConfig(user="u", item="i", timestamp="t", time_unit=TimeUnit.iso, rating=None)
    implicit = implicit.model_copy(update={"engagements": {"click": 0.0}})
    summary = import_file(ParquetEventLog(tmp_path / "log2"), path, "interactions", implicit)
    assert summary.events == {"impression": 3, "click": 3}


def test_items_and_users_become_upserts_before_the_history(tmp_path: Path) -> None:
    """The MovieLens item and user files: genres as a list, the title as text, numbers as numbers
    (not zip codes); through the CLI, upserted a second before the earliest interaction."""
    (tmp_path / "u.item").write_text(
        "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
        encoding="latin-1",
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|05711\n")
    ratings = _write(tmp_path, "movielens")
    env = {"RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state")}
    args = ["import", str(ratings), "--items", str(tmp_path / "u.item"), "--users", str(tmp_path / "u.user")]
    result = CliRunner().invoke(app, [*args, "--text", "title"], env=env)
    assert result.exit_code == 0, result.output
    assert "u.item" in result.output and "impression 4" in result.output
    log = ParquetEventLog(tmp_path / "state" / "events")
    table = log.table()
    item = table.filter(pa.compute.equal(table.column("kind"), "item")).to_pylist()[0]
    assert item["text"] == "Toy Story (1995)"
    attributes = json.loads(item["attributes"])
    assert (
        attributes["genres"] == ["Animation", "Children's", "Comedy"]
        and attributes["release_date"] == "01-Jan-1995"
    )
    user = table.filter(pa.compute.equal(table.column("kind"), "user")).to_pylist()[0]
    assert json.loads(user["attributes"]) == {
        "age": 24,
        "gender": "M",
        "occupation": "technician",
        "zip": "05711",
    }
    assert item["timestamp"].timestamp() == user["timestamp"].timestamp() == min(r[3] for r in ROWS) - 1
    again = CliRunner().invoke(app, [*args, "--text", "title"], env=env)
    assert again.exit_code == 0 and log.count() == len(table)


def test_the_cli_reads_the_mapping_from_config_and_exits_1_on_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "plays.csv"
    path.write_text("who,what,when,stars\n1,10,881250949,5\n1,11,881250950,2\n2,12,bad,4\n")
    config = tmp_path / "recstack.toml"
    config.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n'
        '[mapping]\nuser = "who"\nitem = "what"\ntimestamp = "when"\nrating = "stars"\n'
        "engagements = { click = 3, share = 5 }\n"
    )
    result = CliRunner().invoke(app, ["import", str(path), "--config", str(config)])
    assert result.exit_code == 1
    assert "plays.csv line 4: column 'when'" in result.output
    assert "click 1" in result.output and "share 1" in result.output
    flags = CliRunner().invoke(app, ["import", str(path), "--config", str(config), "--engagement", "like=2"])
    assert "like 2" in flags.output
    bad = CliRunner().invoke(app, ["import", str(path), "--config", str(config), "--engagement", "poke=1"])
    assert bad.exit_code == 1 and "unknown engagement kind(s) poke" in bad.output
