"""Training of the candidate sources ``[retrieval] sources`` names besides the two-tower: ItemCF and
EASE^R neighbours, MF-BPR vectors and popularity, fitted on the positive engagements of the
training window in the bundle's id spaces and written in the layout ``servables/sources.py`` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recstack.config import Settings, SourceKind
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.baselines import EASE, ItemCF
from recstack.servables.sources import save_mf, save_neighbours
from recstack.train.recipes import train_mf_bpr

BUNDLE_SOURCES = (SourceKind.item_cf, SourceKind.ease, SourceKind.mf, SourceKind.popularity)


def top_per_row(weights: np.ndarray, k: int) -> sp.csr_matrix:
    """(I, I) dense weights -> CSR keeping each row's ``k`` largest (positive) entries."""
    n = weights.shape[0]
    if k < n:
        keep = np.argpartition(-weights, k - 1, axis=1)[:, :k]  # (I, k)
        rows = np.repeat(np.arange(n), k)
        values = weights[rows, keep.ravel()]
        matrix = sp.csr_matrix((values, (rows, keep.ravel())), shape=(n, n))
    else:
        matrix = sp.csr_matrix(weights)
    matrix.data[matrix.data < 0] = 0.0  # a negative weight never makes an item a candidate
    matrix.eliminate_zeros()
    return matrix


def train_sources(
    settings: Settings,
    train: Interactions,
    valid: Interactions,
    user_ids: list[str],
    folder: Path,
) -> dict[str, float]:
    """Fit the configured bundle sources (quota > 0) into ``folder`` (a bundle's ``sources/``);
    returns what they report (MF's validation metrics). Raises RecstackError for EASE^R over more
    than ``ease_max_items`` items."""
    cfg = settings.retrieval
    wanted = [kind for kind in BUNDLE_SOURCES if cfg.sources.get(kind, 0) > 0]
    report: dict[str, float] = {}
    if not wanted:
        return report
    folder.mkdir(parents=True, exist_ok=True)
    both = (train.csr() + valid.csr()).tocsr()  # no validation needed but MF's: fit on all of it
    if SourceKind.item_cf in wanted:
        similarity = ItemCF(neighbours=cfg.neighbours).fit(both).similarity_
        save_neighbours(folder, "item_cf", similarity)
    if SourceKind.ease in wanted:
        n = both.shape[1]
        if n > cfg.ease_max_items:
            raise RecstackError(
                f"EASE^R inverts an items x items matrix: {n:,} items need {n * n * 8 / 1e9:.1f} GB "
                f"(more than [retrieval] ease_max_items = {cfg.ease_max_items:,}); set the ease quota to 0"
            )
        save_neighbours(folder, "ease", top_per_row(EASE(cfg.ease_l2).fit(both).weights_, cfg.neighbours))
    if SourceKind.mf in wanted:
        run = train_mf_bpr(train, valid, valid, settings, run_name="feed_mf", mask_validation=False)
        model = run.model
        users = model.users.weight.detach().numpy()
        items = model.items.weight.detach().numpy()
        save_mf(folder, user_ids, users, items)
        report |= {f"mf_{k}": float(v) for k, v in run.test_metrics.items()}
    if SourceKind.popularity in wanted:
        np.save(folder / "popularity.npy", np.asarray(both.sum(axis=0), dtype=np.float32).ravel())
    return report
