"""Off-policy evaluation validated on the Open Bandit Dataset (the small sample in ../shared/data).

For each campaign (men, women, all): estimate the click rate of the Bernoulli Thompson-sampling
policy (BTS, with ZOZOTOWN's production prior) from the uniform-random logs, and compare with the
click rate BTS actually had on its own logs (its on-policy value, the ground truth). The target's
action distribution pi_e(item | position) is BTS's: items ranked by one draw from each item's
Beta(alpha_i, beta_i) prior, the top three filling the three positions, estimated from 1M draws by
recstack's own Thompson sampler (the prior is read from obp's package data, the only published copy).

recstack's estimators (IPS, SNIPS, DM, DR; recstack.eval.ope, reward model cross-fitted) and obp
0.5.7's (IPW, SNIPW, DM, DR; obp's RegressionModel over scikit-learn's logistic regression) run on
the same rows, the same context features (one-hot user features and the user-item affinities, as
obp's OpenBanditDataset builds them) and the same target distribution. obp runs in its own
environment (.bench/obp: it declares python<3.11; installed --no-deps --ignore-requires-python).

Relative error = |estimate - on-policy click rate| / on-policy click rate. With ~40 clicks per
10,000 rows in this sample every figure is noisy; the on-policy value's own 95% interval is printed.

    .venv/bin/python benchmarks/ope_obd.py [--quick] [--data ../shared/data] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
import yaml
from _results import DATA_DIR, peer_env, record

from recstack.data.readers import read_open_bandit
from recstack.eval.ope import LoggedData, evaluate, fit_reward_model

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE.parent / ".bench" / "obp"
CAMPAIGNS = ("men", "women", "all")  # "all" last: its RESULT line is the script's last line
NAMES = {"ips": "ipw", "snips": "snipw", "dm": "dm", "dr": "dr"}


def ensure_peer() -> Path | None:
    # obp declares python<3.11: installed without its pins, then the versions recstack runs
    return peer_env(
        PEER_VENV,
        [
            ["--no-deps", "--ignore-requires-python", "obp==0.5.7"],
            ["numpy==2.4.6", "pandas==2.3.3", "scikit-learn==1.9.1", "scipy==1.17.1", "pyyaml>=6.0.2",
             "matplotlib==3.11.2", "seaborn", "tqdm", "mypy-extensions", "torch==2.13.0"],
        ],
    )  # fmt: skip


def bts_prior(python: Path | None, campaign: str) -> tuple[np.ndarray, np.ndarray]:
    """ZOZOTOWN's BTS prior (alpha, beta per item) from obp's package data."""
    found = list(PEER_VENV.glob("lib/python*/site-packages/obp/policy/conf/prior_bts.yaml"))
    if not found:
        raise SystemExit("the BTS prior ships only inside obp: create the peer environment (no --no-peer)")
    prior = yaml.safe_load(found[0].read_text())[campaign]
    return np.asarray(prior["alpha"], dtype=np.float64), np.asarray(prior["beta"], dtype=np.float64)


def bts_action_dist(alpha: np.ndarray, beta: np.ndarray, positions: int, draws: int, seed: int) -> np.ndarray:
    """(A, K) pi_e(item at position k): the share of Thompson draws ranking the item k-th."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(alpha), positions))
    done = 0
    while done < draws:
        size = min(100_000, draws - done)
        theta = rng.beta(alpha, beta, size=(size, len(alpha)))  # (S, A)
        top = np.argsort(-theta, axis=1)[:, :positions]  # (S, K)
        for k in range(positions):
            counts[:, k] += np.bincount(top[:, k], minlength=len(alpha))
        done += size
    return counts / draws


def load(folder: Path, campaign: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, float, int]:
    """(random log, context (n, d), action context (A, d'), BTS's on-policy CTR, n_items)."""
    random = read_open_bandit(folder, "random", campaign)
    bts = read_open_bandit(folder, "bts", campaign)
    log = random.log.sort_values("timestamp").reset_index(drop=True)
    users = pd.get_dummies(log[[f"user_feature_{i}" for i in range(4)]].astype(str)).to_numpy(np.float64)
    affinity = log[[c for c in log.columns if c.startswith("user-item_affinity")]].to_numpy(np.float64)
    context = np.hstack([users, affinity])
    items = random.item_context.sort_values("item_id")
    features = items.drop(columns=["item_id"])
    action_context = pd.get_dummies(features.astype({c: str for c in features.columns[1:]})).to_numpy(
        np.float64
    )
    return log, context, action_context, float(bts.log["click"].mean()), random.n_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200k draws, 100 bootstrap rounds")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    folder = args.data / "open_bandit_dataset_small"
    python = None if args.no_peer else ensure_peer()
    draws, rounds = (200_000, 100) if args.quick else (1_000_000, 500)
    rows = []
    for campaign in CAMPAIGNS:
        log, context, action_context, truth, n_items = load(folder, campaign)
        n_bts = len(read_open_bandit(folder, "bts", campaign).log)
        half = 1.96 * np.sqrt(truth * (1 - truth) / n_bts)
        alpha, beta = bts_prior(python, campaign)
        dist = bts_action_dist(alpha, beta, 3, draws, args.seed)
        n = len(log)
        target = np.broadcast_to(dist, (n, n_items, 3)).copy()
        data = LoggedData(
            log["item_id"].to_numpy(),
            log["click"].to_numpy(np.float64),
            log["propensity_score"].to_numpy(np.float64),
            log["position"].to_numpy() - 1,
            context,
        )
        q = fit_reward_model(data, n_items, 3, seed=args.seed)
        ours = {k: e.value for k, e in evaluate(data, target, q, rounds=rounds, seed=args.seed).items()}
        peer: dict[str, float] = {}
        if python is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "input.npz"
                np.savez(
                    path, action=data.actions, position=data.positions, reward=data.rewards,
                    pscore=data.propensities, context=context, action_context=action_context,
                    action_dist=target,
                )  # fmt: skip
                done = subprocess.run(
                    [str(python), str(HERE / "peers" / "obp_ope.py"), str(path), str(args.seed)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
            if done.returncode != 0:
                print(f"obp failed:\n{done.stderr[-3000:]}")
            else:
                peer = json.loads(done.stdout.strip().splitlines()[-1])
        err = {k: abs(v - truth) / truth for k, v in ours.items()}
        peer_err = {k: abs(v - truth) / truth for k, v in peer.items()}
        best = min(err, key=lambda k: err[k])
        peer_best = min(peer_err, key=lambda k: peer_err[k]) if peer_err else None
        print(f"\n{campaign}: BTS on-policy CTR {truth:.5f} (95% +-{half:.5f}); random log CTR "
              f"{data.rewards.mean():.5f}, {int(data.rewards.sum())} clicks")  # fmt: skip
        for key, name in NAMES.items():
            theirs = (
                f"obp {name:5s} {peer[name]:.5f} (rel. error {peer_err[name]:.3f})" if name in peer else ""
            )
            print(f"  recstack {key:5s} {ours[key]:.5f} (rel. error {err[key]:.3f})   {theirs}")
        rows.append((campaign, best, err[best], peer_best, peer_err.get(peer_best or "", float("nan"))))
    for campaign, best, e, peer_best, pe in rows:
        record(
            "ope_obd",
            {
                "campaign": campaign,
                "estimator": best,
                "rel_error": round(e, 4),
                "obp_best_rel_error": round(pe, 4) if peer_best else "n/a",
                "obp_best": peer_best or "n/a",
            },
            "BTS value from the uniform-random logs; same rows and target for both; "
            + ("met" if peer_best and e <= pe + 1e-12 else "not met" if peer_best else "no peer"),
        )


if __name__ == "__main__":
    main()
