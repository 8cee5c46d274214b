"""Cold start on MovieLens-100k: can the two-tower retrieve items it was never trained on, from
their text alone?

Protocol (fixed): 20% of the items, drawn at random (seed 0), are "new": every rating of them is
removed from training. The two-tower trains on the rest (90% of the remaining ratings; 10% pick the
epoch), with each item's text, ``"<title>. Genres: <genres>"``, embedded by all-MiniLM-L6-v2 and fed
to the item tower. Then the new items enter through the text path alone (``content_vectors``), and
for every user who rated a new item we rank the new items (only them: the "fresh" slate) and
report Recall@10 and NDCG@10 of the user's new items. Peers in the same run: random order (the
floor, Recall@10 = 10 / new items in expectation) and a text profile without training (cosine of
each new item's text with the mean text of the user's rated items); and a control, the same
two-tower with the new items' texts shuffled among them (which must fall to the floor if the text,
and nothing else, carries the signal).

    .venv/bin/python benchmarks/cold_start_ml100k.py [--quick] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import scipy.sparse as sp
import torch
from _results import DATA_DIR, bench_settings, record

from recstack.data.interactions import Interactions, Vocabulary
from recstack.data.readers import read_movielens_100k
from recstack.eval.metrics import full_ranking_eval
from recstack.features.text import shared_encoder
from recstack.train.recipes import train_two_tower, user_histories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two epochs")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--new-share", type=float, default=0.2)
    args = parser.parse_args()
    ml = read_movielens_100k(args.data / "movielens-100k")
    rng = np.random.default_rng(0)
    all_items = np.sort(ml.items["item_id"].unique())
    new_items = np.sort(rng.choice(all_items, int(len(all_items) * args.new_share), replace=False))
    is_new = ml.ratings["item_id"].isin(new_items)
    warm, cold = ml.ratings[~is_new], ml.ratings[is_new]

    users = Vocabulary.fit(ml.ratings["user_id"])
    warm_items = Vocabulary.fit(warm["item_id"])
    holdout = rng.random(len(warm)) < 0.1
    train = Interactions.encode(warm[~holdout], users, warm_items)
    valid = Interactions.encode(warm[holdout], users, warm_items)

    text_of = {
        row.item_id: f"{row.title}. Genres: {', '.join(row.genres)}"
        for row in ml.items.itertuples(index=False)
    }
    encoder = shared_encoder()
    warm_text = encoder.embed([text_of[i] for i in warm_items.ids])  # (n_warm, 384)
    new_vocab = Vocabulary.fit(cold["item_id"])
    new_text = encoder.embed([text_of[i] for i in new_vocab.ids])  # (n_new, 384)

    settings = bench_settings(
        {
            "RECSTACK_EVAL__KS": "[10]",
            "RECSTACK_TRAIN__PATIENCE": "3",
            "RECSTACK_TRAIN__EPOCHS": "2" if args.quick else "40",
            "RECSTACK_TRAIN__LR": "0.003",
            "RECSTACK_TRAIN__BATCH_SIZE": "1024",
            "RECSTACK_TWO_TOWER__TEMPERATURE": "0.1",
        },
    )
    run = train_two_tower(
        train,
        valid,
        valid,
        settings,
        run_name="cold_start",
        item_text=torch.from_numpy(warm_text),
        mask_validation=False,
    )
    model = run.model.eval()
    history = user_histories((train.csr() + valid.csr()).tocsr(), settings.two_tower.history)

    target = sp.csr_matrix(
        (np.ones(len(cold)), (users.encode(cold["user_id"]), new_vocab.encode(cold["item_id"]))),
        shape=(len(users), len(new_vocab)),
    )
    target.data[:] = 1.0
    with torch.no_grad():
        new_vectors = model.content_vectors(torch.from_numpy(new_text))  # (n_new, D)

    def two_tower(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            u = model.user_vectors(torch.from_numpy(batch), torch.from_numpy(history[batch]))
            return (u @ new_vectors.T).numpy()  # type: ignore[no-any-return]

    seen = (train.csr() + valid.csr()).tocsr()
    profile = np.asarray(seen @ warm_text) / np.maximum(seen.sum(axis=1), 1)  # (n_users, 384)

    shuffled = new_vectors[torch.from_numpy(rng.permutation(len(new_vocab)))]

    def shuffled_text(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            u = model.user_vectors(torch.from_numpy(batch), torch.from_numpy(history[batch]))
            return (u @ shuffled.T).numpy()  # type: ignore[no-any-return]

    def text_profile(batch: np.ndarray) -> np.ndarray:
        return profile[batch] @ new_text.T  # type: ignore[no-any-return]

    def random_order(batch: np.ndarray) -> np.ndarray:
        return rng.random((len(batch), len(new_vocab)))

    results = {
        name: full_ranking_eval(fn, target, None, (10,))
        for name, fn in (
            ("random", random_order),
            ("text_profile", text_profile),
            ("shuffled_text", shuffled_text),
            ("two_tower", two_tower),
        )
    }
    print(
        f"{len(new_vocab)} new items ({len(cold)} ratings by {results['random']['users']:.0f} users); "
        f"two-tower trained {run.fit.epochs_run} epochs on {len(train)} ratings of {len(warm_items)} items"
    )
    for name, metrics in results.items():
        print(f"  {name:13s} recall@10 {metrics['recall@10']:.4f}  ndcg@10 {metrics['ndcg@10']:.4f}")
    record(
        f"cold_start_ml100k{' --quick' if args.quick else ''}",
        {
            "new_items": len(new_vocab),
            "random_recall@10": round(results["random"]["recall@10"], 4),
            "text_profile_recall@10": round(results["text_profile"]["recall@10"], 4),
            "shuffled_text_recall@10": round(results["shuffled_text"]["recall@10"], 4),
            "recall@10": round(results["two_tower"]["recall@10"], 4),
            "ndcg@10": round(results["two_tower"]["ndcg@10"], 4),
        },
        "new items retrieved by text alone among the new items; ranks only the new items",
    )


if __name__ == "__main__":
    main()
