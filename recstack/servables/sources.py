"""The candidate sources a bundle carries besides the two-tower, as serving loads them.

Under ``sources/`` of a bundle, in the retriever's item order (the bundle's item ids):

- ``item_cf.npz``, ``ease.npz``: (I, I) sparse item-to-item weights (CSR, ``neighbours`` per row): the
  ItemCF cosine similarities or the EASE^R weights. A request scores the catalog by summing the rows
  of its user's recent items.
- ``mf/``: ``users.json`` (user ids), ``user_vectors.npy`` (U, D) and ``item_vectors.npy`` (I, D) of
  MF-BPR; a known user searches with its vector, an unknown one with the mean of its recent items'.
- ``popularity.npy``: (I,) engagements per item in the training window.

``load_sources`` reads what is there; what a bundle lacks is missing from the dict, and the
serving graph refuses a configured source that is missing, before the first request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recstack.errors import CheckpointError

NEIGHBOUR_SOURCES = ("item_cf", "ease")


@dataclass
class MFVectors:
    user_index: dict[str, int]
    users: np.ndarray  # (U, D) float32
    items: np.ndarray  # (I, D) float32


@dataclass
class BundleSources:
    neighbours: dict[str, sp.csr_matrix]
    mf: MFVectors | None
    popularity: np.ndarray | None

    def kinds(self) -> list[str]:
        out = list(self.neighbours)
        if self.mf is not None:
            out.append("mf")
        if self.popularity is not None:
            out.append("popularity")
        return out


def save_neighbours(folder: Path, name: str, matrix: sp.csr_matrix) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sp.save_npz(folder / f"{name}.npz", sp.csr_matrix(matrix, dtype=np.float32))


def save_mf(folder: Path, user_ids: list[str], users: np.ndarray, items: np.ndarray) -> None:
    target = folder / "mf"
    target.mkdir(parents=True, exist_ok=True)
    (target / "users.json").write_text(json.dumps(user_ids))
    np.save(target / "user_vectors.npy", users.astype(np.float32))
    np.save(target / "item_vectors.npy", items.astype(np.float32))


def load_sources(folder: Path, n_items: int) -> BundleSources:
    """The sources under ``folder`` (a bundle's ``sources/``), checked against the bundle's ``n_items``;
    CheckpointError for a damaged or mis-sized file."""
    neighbours: dict[str, sp.csr_matrix] = {}
    mf = None
    popularity = None
    try:
        for name in NEIGHBOUR_SOURCES:
            path = folder / f"{name}.npz"
            if path.exists():
                matrix = sp.load_npz(path).tocsr()
                if matrix.shape != (n_items, n_items):
                    raise ValueError(f"{name}.npz has shape {matrix.shape}, expected ({n_items}, {n_items})")
                neighbours[name] = matrix
        if (folder / "mf").exists():
            user_ids = json.loads((folder / "mf" / "users.json").read_text())
            users = np.load(folder / "mf" / "user_vectors.npy", allow_pickle=False)
            items = np.load(folder / "mf" / "item_vectors.npy", allow_pickle=False)
            if (
                users.shape[0] != len(user_ids)
                or items.shape[0] != n_items
                or users.shape[1] != items.shape[1]
            ):
                raise ValueError(f"mf vectors {users.shape} / {items.shape} do not fit {len(user_ids)} users")
            mf = MFVectors({u: n for n, u in enumerate(user_ids)}, users, items)
        if (folder / "popularity.npy").exists():
            popularity = np.load(folder / "popularity.npy", allow_pickle=False)
            if popularity.shape != (n_items,):
                raise ValueError(f"popularity.npy has shape {popularity.shape}, expected ({n_items},)")
    except Exception as exc:  # numpy, scipy and json raise several types for damaged files
        raise CheckpointError(f"candidate sources in {folder} are missing or corrupt: {exc}") from exc
    return BundleSources(neighbours, mf, popularity)
