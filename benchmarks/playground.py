"""The closed-loop playground (``recstack demo``) as a measurement: online CTR per round of the
served feed against the random feed of the history, the simulator's true expected CTR of what was
served, each incremental model's holdout AUC, and the users' searches: the MRR of the item name each
looked up among autocomplete's suggestions for its first 1-5 characters, with the topic boost and
without (``topic_boost=false``).

    .venv/bin/python benchmarks/playground.py [--quick] [--rounds 3]

Ends with ``RESULT history_ctr=<x> ctr_round_1=<x> true_ctr_round_1=<x> auc_click_round_1=<x> ...``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import record

from recstack.config import load_settings
from recstack.playground import PlaygroundConfig, run_playground


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller world, two rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--topic-weight", type=float, help="[autocomplete] topic_weight (default: the config's)"
    )
    args = parser.parse_args()
    config = (
        PlaygroundConfig(
            users=200, items=400, held_back=60, history_requests=3_000, rounds=2, requests_per_round=150
        )
        if args.quick
        else PlaygroundConfig(rounds=args.rounds)
    )
    settings = load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": tempfile.mkdtemp(prefix="recstack-playground-"),
            "RECSTACK_TRAIN__PROGRESS": "false",
        }
        | (
            {"RECSTACK_AUTOCOMPLETE__TOPIC_WEIGHT": str(args.topic_weight)}
            if args.topic_weight is not None
            else {}
        ),
    )
    results = run_playground(settings, Console(), config=config)
    figures: dict[str, object] = {"history_ctr": round(results[0].history_ctr, 4)}
    for r in results:
        figures[f"ctr_round_{r.round}"] = round(r.ctr, 4)
        figures[f"true_ctr_round_{r.round}"] = round(r.true_ctr, 4)
        figures[f"auc_click_round_{r.round}"] = round(r.auc_click or float("nan"), 4)
        figures[f"search_mrr_round_{r.round}"] = round(r.search_mrr, 4)
        figures[f"search_mrr_plain_round_{r.round}"] = round(r.search_mrr_plain, 4)
    quick = (" --quick" if args.quick else "") + (
        f" --topic-weight {args.topic_weight:g}" if args.topic_weight is not None else ""
    )
    figures["topic_weight"] = settings.autocomplete.topic_weight
    record(
        f"playground{quick}",
        figures,
        f"simulator world ({config.users} users, {config.items} items); rounds of "
        f"{config.requests_per_round} requests and {config.searches_per_round} searches over HTTP on "
        f"loopback; known-item searches by generated item names ({config.history_searches:,} in the "
        "history, each a query and a click on the item)",
    )


if __name__ == "__main__":
    main()
