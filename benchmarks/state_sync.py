"""What one second of the worker's snapshots costs, whole against delta, as users grow.

A feed state with ``--users`` users (each with 10 engagements and 50 seen items) over ``--items``
items is built; then one second of traffic at 200 requests/s is applied (200 users each shown 20
items and clicking one). The worker then writes a snapshot of that second and an API process brings
its copy up to date, two ways:

- whole: ``capture`` + ``encode`` of every user and counter, ``FeedState.from_bytes`` on the API
  side (sharing the catalog and taking over unchanged users, as ``recstack serve`` does);
- delta: ``capture(delta=True)`` + ``encode`` of what moved, ``FeedState.apply_delta`` in place.

Both follower states are checked equal to the worker's before timing counts. Each figure is the
median of ``--repeats`` rounds. Ends with ``RESULT users=<n> whole_ms=<x> delta_ms=<x> ...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import record  # noqa: E402


def build(users: int, items: int, seed: int = 0) -> object:
    """The state after a long history, built directly (parsing ten million events would take
    minutes): each user's history and seen items, and the counters they imply."""
    from collections import OrderedDict, deque

    from recstack.serving.state import Changes, FeedState, UserState

    rng = np.random.default_rng(seed)
    state = FeedState()
    state.load_items(
        [f"i{i}" for i in range(items)], [f"c{i % 5_000}" for i in range(items)], np.zeros(items, np.int64)
    )
    picks = rng.integers(items, size=(users, 50))
    for u, row in enumerate(picks.tolist()):
        state.users[f"u{u}"] = UserState(
            deque(row[:10], maxlen=state.history_length), OrderedDict.fromkeys(row), set()
        )
    np.add.at(state.impressions.data, picks[:, 10:].ravel(), 1.0)
    np.add.at(state.clicks.data, picks[:, :10].ravel(), 1.0)
    state.changes = Changes()
    return state


def one_second(state: object, rng: np.random.Generator, items: int, users: int, second: int) -> None:
    from recstack.schema import parse_event

    events = []
    for r in range(200):
        user = f"u{int(rng.integers(users))}"
        shown = rng.integers(items, size=20).tolist()
        events += [
            parse_event(
                {
                    "event_id": f"t{second}-{r}-{p}",
                    "kind": "impression",
                    "timestamp": 10_000 + second,
                    "user_id": user,
                    "item_id": f"i{i}",
                    "request_id": f"t{second}-{r}",
                    "position": p,
                }
            )
            for p, i in enumerate(shown)
        ]
        events.append(
            parse_event(
                {
                    "event_id": f"t{second}-{r}-click",
                    "kind": "click",
                    "timestamp": 10_000 + second,
                    "user_id": user,
                    "item_id": f"i{shown[0]}",
                }
            )
        )
    state.apply(events)  # type: ignore[attr-defined]


def main() -> None:
    from recstack.serving.state import FeedState

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 users, 3 rounds")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    users = args.users or (20_000 if args.quick else 200_000)
    repeats = args.repeats or (3 if args.quick else 5)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    worker: FeedState = build(users, args.items)  # type: ignore[assignment]
    print(f"built {users:,} users over {args.items:,} items in {time.perf_counter() - t0:.0f} s")
    start = worker.snapshot()
    whole_follower = FeedState.from_bytes(start.state, start.catalog)
    delta_follower = FeedState.from_bytes(start.state, start.catalog)
    worker.capture(with_catalog=False)  # the tracking of changes starts here
    rounds: dict[str, list[float]] = {"whole": [], "delta": [], "whole_write": [], "delta_write": []}
    sizes: dict[str, int] = {}
    for second in range(repeats):
        one_second(worker, rng, args.items, users, second)
        # delta first: capture(delta=True) takes the changes a whole capture would also reset
        t = time.perf_counter()
        delta = worker.capture(with_catalog=False, delta=True).encode().state
        written = time.perf_counter() - t
        delta_follower.apply_delta(delta)
        rounds["delta_write"].append(written)
        rounds["delta"].append(time.perf_counter() - t)
        t = time.perf_counter()
        whole = worker.capture(with_catalog=False).encode().state
        written = time.perf_counter() - t
        fresh = FeedState.from_bytes(whole, None, whole_follower)
        whole_follower.update_from(fresh)
        rounds["whole_write"].append(written)
        rounds["whole"].append(time.perf_counter() - t)
        sizes = {"whole": len(whole), "delta": len(delta)}
        worker.applied.clear()  # acknowledged
        for follower in (whole_follower, delta_follower):
            assert follower.version == worker.version
            assert follower.impressions.values.tolist() == worker.impressions.values.tolist()
            assert {u: list(s.seen) for u, s in follower.users.items()} == {
                u: list(s.seen) for u, s in worker.users.items()
            }
    ms = {k: 1e3 * statistics.median(v) for k, v in rounds.items()}
    print(
        f"one second of traffic (200 requests) with {users:,} users: whole snapshot "
        f"{ms['whole']:.1f} ms (worker {ms['whole_write']:.1f} ms, {sizes['whole'] / 1e6:.1f} MB), "
        f"delta {ms['delta']:.2f} ms (worker {ms['delta_write']:.2f} ms, {sizes['delta'] / 1e3:.0f} kB)"
    )
    quick = " --quick" if args.quick else ""
    record(
        f"state_sync{quick}",
        {
            "users": users,
            "items": args.items,
            "whole_ms": round(ms["whole"], 1),
            "whole_write_ms": round(ms["whole_write"], 1),
            "whole_mb": round(sizes["whole"] / 1e6, 2),
            "delta_ms": round(ms["delta"], 2),
            "delta_write_ms": round(ms["delta_write"], 2),
            "delta_kb": round(sizes["delta"] / 1e3, 1),
            "speedup": round(ms["whole"] / ms["delta"], 1),
        },
        f"median of {repeats} seconds of 200 requests (20 impressions, 1 click each); worker write "
        "(capture + encode) plus one API process's update, in one process",
    )


if __name__ == "__main__":
    main()
