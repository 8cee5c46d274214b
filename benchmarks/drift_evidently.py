"""recstack's drift statistics against Evidently's on the same two windows.

Windows: the simulator serves a random feed for four days; on day 4 every user's interests and
the items' appeal shift (``World.shift_interests``). Day 1 only fills the log (its windowed features
start from nothing). The ``[[features]]`` defaults are materialized
offline (point in time) for one impression per request, as recstack's checks count them. Pairs:
day 2 against day 3 (stable) and day 3 against day 4 (shifted). Evidently 0.7.23 runs in its own
environment (.bench/evidently; it does not co-install with recstack's pins) on the same arrays.

Agreement, per feature:
- KS: the same two-sample test (both call SciPy's ``ks_2samp``): p-values agree to 1e-6 relative;
- PSI, formula: recstack's ``psi_of_shares`` on Evidently's own bins (Sturges equal-width bins over
  both windows for a numeric feature with more than 20 values, each value otherwise) equals
  Evidently's PSI to 1e-6 (both count an empty bin as 1e-4);
- PSI, as each computes it: recstack bins by the reference's deciles, Evidently by Sturges' equal
  widths; reported side by side with the share of features whose drift decision at PSI 0.25 agrees.

    .venv/bin/python benchmarks/drift_evidently.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _results import peer_env, record

from recstack.config import Settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.events.parquet import ParquetEventLog
from recstack.features.definitions import LastN, RetrievalScore, TextEmbedding
from recstack.features.feed import is_categorical
from recstack.features.offline import materialize
from recstack.monitoring.drift import compare, one_per_request, profile, psi_of_shares

HERE = Path(__file__).resolve().parent
EVIDENTLY = HERE.parent / ".bench" / "evidently"


def evidently_bins_psi(ref: np.ndarray, cur: np.ndarray, categorical: bool) -> float:
    """recstack's PSI formula on the bins Evidently's ``get_binned_data`` makes."""
    if not categorical and len(np.unique(ref)) > 20:
        edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
        a, b = np.histogram(ref, edges)[0] / len(ref), np.histogram(cur, edges)[0] / len(cur)
    else:
        keys = np.unique(np.concatenate([ref, cur]))
        a = np.array([np.mean(ref == k) for k in keys])
        b = np.array([np.mean(cur == k) for k in keys])
    return psi_of_shares(a, b)


def windows(args: argparse.Namespace, root: Path) -> dict[str, dict[str, np.ndarray]]:
    settings = Settings()
    features = [
        f
        for f in settings.features
        if not isinstance(f, TextEmbedding | RetrievalScore | LastN)
        and f.name not in settings.drift_skipped()
    ]
    world = World.generate(n_users=args.users, n_items=args.items, seed=args.seed)
    start = datetime.now(UTC) - timedelta(days=6)
    sim = Simulator(world, seed=args.seed, start=start, requests_per_day=args.per_day)
    log = ParquetEventLog(root / "events")
    log.append_table(sim.catalog_events())
    policy = RandomPolicy(world.n_items, seed=args.seed)
    days = []
    for day in range(4):
        if day == 3:
            world.shift_interests(1.0, np.random.default_rng(args.seed))
        first = sim.now_us
        for table in sim.run(policy, args.per_day, 2_000):
            log.append_table(table)
        days.append((first, sim.now_us))
    events = log.table()
    out: dict[str, dict[str, np.ndarray]] = {}
    for day, (lo, hi) in enumerate(days):
        stamps = events["timestamp"].cast(pa.int64())
        shown = events.filter(
            pc.and_(
                pc.equal(events["kind"], "impression"),
                pc.and_(pc.greater_equal(stamps, lo), pc.less(stamps, hi)),
            )
        )
        shown = shown.take(
            pa.array(one_per_request(shown["request_id"].to_numpy(zero_copy_only=False), seed=day))
        )
        rows = shown.select(["timestamp", "user_id", "item_id", "surface", "context"])
        table = materialize(events, rows, features)
        out[f"day{day + 1}"] = {
            f.name: table[f.name].to_numpy(zero_copy_only=False).astype(np.float64) for f in features
        }
    out["kinds"] = {f.name: np.array("categorical" if is_categorical(f) else "numeric") for f in features}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests per day")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--per-day", type=int, default=6_000)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.per_day = 600, 1_000, 2_000
    python = peer_env(EVIDENTLY, [["evidently==0.7.23", "numpy==2.2.6", "pandas==2.3.3"]])
    if python is None:
        raise SystemExit("the Evidently environment could not be created")
    with tempfile.TemporaryDirectory() as tmp:
        data = windows(args, Path(tmp))
        kinds = data.pop("kinds")
        rows = []
        for pair, (a, b) in {"stable": ("day2", "day3"), "shifted": ("day3", "day4")}.items():
            arrays = {}
            for name, kind in kinds.items():
                ref, cur = data[a][name], data[b][name]
                ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
                arrays |= {f"ref:{name}": ref, f"cur:{name}": cur, f"kind:{name}": kind}
            path = Path(tmp) / f"{pair}.npz"
            np.savez(path, **arrays)
            env_out = subprocess.run([str(python), str(HERE / "peers" / "evidently_drift.py"), str(path)],
                                     capture_output=True, text=True, check=True)  # fmt: skip
            theirs = json.loads(env_out.stdout.strip().splitlines()[-1])
            for name, kind in kinds.items():
                categorical = str(kind) == "categorical"
                ref, cur = arrays[f"ref:{name}"], arrays[f"cur:{name}"]
                ours = compare(name, profile(ref, categorical, sample=len(ref)), cur)
                rows.append(
                    {
                        "pair": pair,
                        "feature": name,
                        "n": len(cur),
                        "psi": ours.psi,
                        "psi_on_their_bins": evidently_bins_psi(ref, cur, categorical),
                        "evidently_psi": theirs[name]["psi"],
                        "ks_p": ours.ks_p,
                        "evidently_ks_p": theirs[name].get("ks_p"),
                    }
                )
    print(f"{'pair':8s} {'feature':22s} {'n':>6s} {'PSI':>8s} {'PSI/their bins':>14s} {'Evidently':>10s} "
          f"{'KS p':>10s} {'Evidently':>10s}")  # fmt: skip
    for r in rows:
        ks = "" if r["ks_p"] is None else f"{r['ks_p']:.3g}"
        eks = "" if r["evidently_ks_p"] is None else f"{r['evidently_ks_p']:.3g}"
        print(f"{r['pair']:8s} {r['feature']:22s} {r['n']:6d} {r['psi']:8.4f} {r['psi_on_their_bins']:14.6f} "
              f"{r['evidently_psi']:10.6f} {ks:>10s} {eks:>10s}")  # fmt: skip
    formula = max(
        abs(r["psi_on_their_bins"] - r["evidently_psi"]) / max(r["evidently_psi"], 1e-9) for r in rows
    )
    ks_rows = [r for r in rows if r["ks_p"] is not None and r["evidently_ks_p"] is not None]
    ks_gap = max(abs(r["ks_p"] - r["evidently_ks_p"]) / max(r["evidently_ks_p"], 1e-300) for r in ks_rows)
    decided = np.mean([(r["psi"] > 0.25) == (r["evidently_psi"] > 0.25) for r in rows])
    max_gap = max(abs(r["psi"] - r["evidently_psi"]) for r in rows)
    print(f"PSI on Evidently's bins vs Evidently: largest relative gap {formula:.2e} (tolerance 1e-6)")
    print(f"KS p-values: largest relative gap {ks_gap:.2e} (tolerance 1e-6)")
    print(f"PSI as each bins it: largest gap {max_gap:.3f}; drift decisions at 0.25 agree for {decided:.0%}")
    record(
        "drift_evidently" + (" --quick" if args.quick else ""),
        {
            "features": len(rows) // 2,
            "psi_formula_rel_gap": f"{formula:.1e}",
            "ks_p_rel_gap": f"{ks_gap:.1e}",
            "psi_max_gap_own_bins": round(max_gap, 3),
            "psi_decisions_agree": round(float(decided), 3),
            "agree": bool(formula <= 1e-6 and ks_gap <= 1e-6),
        },
        f"Evidently 0.7.23 in .bench/evidently; {args.per_day} requests/day, one impression per request; "
        "stable pair day 2 vs 3, shifted pair day 3 vs 4",
    )


if __name__ == "__main__":
    main()
