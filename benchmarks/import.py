"""``recstack import`` of MovieLens-100k: rows a second through the command as a user runs it.

The three files (u.data: 100,000 ratings; u.item; u.user) are imported into a fresh embedded log by
``recstack import u.data --items u.item --users u.user --text title`` in a subprocess (start-up and
the catalog-time pass included), then imported again (every event a duplicate, what a re-run of a
nightly import costs). ``--quick``: ua.test (9,430 ratings) read as a headerless TSV.

    .venv/bin/python benchmarks/import.py [--quick]

Ends with ``RESULT rows_per_s=<n> ...``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DATA_DIR, record

RECSTACK = Path(sys.executable).with_name("recstack")


def run(args: list[str], state: Path) -> tuple[float, str]:
    env = os.environ | {"RECSTACK_PATHS__STATE_DIR": str(state), "RECSTACK_TRACKING__ENABLED": "false"}
    started = time.perf_counter()
    done = subprocess.run(
        [str(RECSTACK), "import", *args], env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"recstack import failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=DATA_DIR / "movielens-100k")
    args = parser.parse_args()
    folder = args.data
    if not (folder / "u.data").exists():
        raise SystemExit(f"MovieLens-100k not found under {folder} (see its PROVENANCE.md)")
    if args.quick:
        files = [str(folder / "ua.test"), "--format", "tsv", "--columns", "user_id,item_id,rating,timestamp"]
        rows = sum(1 for _ in (folder / "ua.test").open())
    else:
        files = [str(folder / "u.data"), "--items", str(folder / "u.item"), "--users", str(folder / "u.user")]
        files += ["--text", "title"]
        rows = sum(
            1 for name in ("u.data", "u.item", "u.user") for _ in (folder / name).open(encoding="latin-1")
        )
    with tempfile.TemporaryDirectory() as tmp:
        first, output = run(files, Path(tmp))
        print(output, end="")
        again, output = run(files, Path(tmp))
        print(output, end="")
    print(f"{rows:,} rows: first import {first:.1f} s ({rows / first:,.0f} rows/s), again {again:.1f} s")
    record(
        "import" + (" --quick" if args.quick else ""),
        {
            "rows_per_s": round(rows / first),
            "rows": rows,
            "seconds": round(first, 2),
            "reimport_rows_per_s": round(rows / again),
        },
        "recstack import in a subprocess into a fresh embedded log (start-up included); reimport: "
        "the same files again, every event a duplicate",
    )


if __name__ == "__main__":
    main()
