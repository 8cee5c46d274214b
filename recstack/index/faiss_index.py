"""Nearest-neighbour search over item vectors with FAISS: exact (flat inner product), HNSW, or IVF.

Items carry int64 ids. New items are added incrementally; deleted items are removed (flat and IVF
remove them from the index; HNSW cannot, so they are tombstoned and filtered at search time). Every
approximate index can report its recall against exact search on the same vectors, which the build
does and records. Saved as ``index.faiss`` plus ``index.json`` (kind, dim, parameters, tombstones).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recstack.config import IndexKind
from recstack.errors import CheckpointError, RecstackError

__all__ = ["IndexKind", "IndexParams", "ItemIndex"]


@dataclass(frozen=True)
class IndexParams:
    """hnsw_m: graph degree; ef_construction / ef_search: HNSW beam widths; ivf_lists: IVF cells
    (default about 4 sqrt(N)); nprobe: cells visited per IVF query."""

    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    ivf_lists: int | None = None
    nprobe: int = 32


class ItemIndex:
    """Inner-product search over item vectors with int64 ids. See the module docstring."""

    def __init__(self, dim: int, kind: IndexKind = IndexKind.hnsw, params: IndexParams | None = None) -> None:
        if dim < 1:
            raise RecstackError("index dimension must be >= 1")
        self.dim = dim
        self.kind = IndexKind(kind)
        self.params = params or IndexParams()
        self._index: Any = None
        self._tombstones: set[int] = set()
        self.build_recall: float | None = None

    @property
    def size(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal) - len(self._tombstones)

    def _vectors(self, vectors: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise RecstackError(f"expected vectors of shape (N, {self.dim}), got {array.shape}")
        if not np.isfinite(array).all():
            raise RecstackError("vectors contain NaN or infinite values")
        return array

    def build(
        self,
        vectors: np.ndarray,
        ids: np.ndarray | None = None,
        check_queries: int = 1000,
        check_k: int = 100,
    ) -> ItemIndex:
        """Index ``vectors`` (N, dim) under ``ids`` (default 0..N-1); approximate kinds measure their
        recall@check_k against exact search on up to ``check_queries`` of the vectors as queries."""
        array = self._vectors(vectors)
        if len(array) == 0:
            raise RecstackError("cannot build an index over no items")
        ids = np.arange(len(array), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(ids) != len(array) or len(np.unique(ids)) != len(ids):
            raise RecstackError("ids must be unique and as many as the vectors")
        p = self.params
        if self.kind is IndexKind.flat:
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        elif self.kind is IndexKind.hnsw:
            hnsw = faiss.IndexHNSWFlat(self.dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = p.ef_construction
            hnsw.hnsw.efSearch = p.ef_search
            self._index = faiss.IndexIDMap2(hnsw)
        else:
            lists = p.ivf_lists or max(1, min(int(4 * np.sqrt(len(array))), len(array) // 39 or 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, lists, faiss.METRIC_INNER_PRODUCT)
            ivf.train(array)
            ivf.nprobe = p.nprobe
            self._index = ivf
        self._index.add_with_ids(array, ids)
        self._tombstones.clear()
        if self.kind is not IndexKind.flat and check_queries > 0:
            rng = np.random.default_rng(0)
            sample = array[rng.choice(len(array), min(check_queries, len(array)), replace=False)]
            self.build_recall = self.recall_against_exact(array, ids, sample, min(check_k, len(array)))
        return self

    def tune(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the search-time effort: HNSW's efSearch or IVF's nprobe (recall against speed)."""
        if self._index is None:
            raise RecstackError("the index is empty: build it first")
        if self.kind is IndexKind.hnsw and ef_search is not None:
            hnsw: Any = faiss.downcast_index(self._index.index)
            hnsw.hnsw.efSearch = ef_search
        if self.kind is IndexKind.ivf and nprobe is not None:
            self._index.nprobe = nprobe

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores, ids), each (Q, k); missing slots have id -1."""
        if self._index is None:
            raise RecstackError("the index is empty: build it first")
        array = self._vectors(queries)
        fetch = k + len(self._tombstones) if self._tombstones else k
        scores, ids = self._index.search(array, max(fetch, 1))
        if self._tombstones:
            dead = np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))
            order = np.argsort(dead, axis=1, kind="stable")  # live results first, rank kept
            ids = np.take_along_axis(np.where(dead, -1, ids), order, axis=1)
            scores = np.take_along_axis(np.where(dead, -np.inf, scores), order, axis=1)
        return scores[:, :k], ids[:, :k]

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add new items (e.g. just uploaded); re-adding a removed id revives it."""
        if self._index is None:
            self.build(vectors, ids, check_queries=0)
            return
        ids = np.asarray(ids, dtype=np.int64)
        revived = [int(i) for i in ids if int(i) in self._tombstones]
        if revived:
            raise RecstackError(f"ids {revived[:5]} were removed from an HNSW index; rebuild to reuse them")
        self._index.add_with_ids(self._vectors(vectors), ids)

    def remove(self, ids: np.ndarray) -> None:
        """Remove deleted items; they are never returned again."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._index is None:
            return
        if self.kind is IndexKind.hnsw:
            self._tombstones.update(int(i) for i in ids)
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def recall_against_exact(
        self, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
    ) -> float:
        """Share of the exact top-k (flat inner product over ``vectors``) that this index returns."""
        exact = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        exact.add_with_ids(self._vectors(vectors), np.asarray(ids, dtype=np.int64))
        _, truth = exact.search(self._vectors(queries), k)
        _, found = self.search(queries, k)
        hits = sum(len(np.intersect1d(t, f)) for t, f in zip(truth, found, strict=True))
        return hits / truth.size

    def save(self, folder: Path) -> None:
        if self._index is None:
            raise RecstackError("nothing to save: the index is empty")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "index.faiss.tmp"
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, folder / "index.faiss")
        meta = {
            "kind": self.kind.value,
            "dim": self.dim,
            "params": self.params.__dict__,
            "tombstones": sorted(self._tombstones),
            "build_recall": self.build_recall,
        }
        (folder / "index.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> ItemIndex:
        """Read an index saved by :meth:`save`; a missing or corrupt file raises CheckpointError."""
        meta_path, index_path = folder / "index.json", folder / "index.faiss"
        if not meta_path.exists() or not index_path.exists():
            raise CheckpointError(f"no index in {folder} (index.json and index.faiss are needed)")
        try:
            meta = json.loads(meta_path.read_text())
            loaded = faiss.read_index(str(index_path))
        except (json.JSONDecodeError, RuntimeError) as exc:
            raise CheckpointError(f"index in {folder} is corrupt: {exc}") from exc
        if loaded.d != meta["dim"]:
            raise CheckpointError(
                f"index in {folder} has dimension {loaded.d}, its metadata says {meta['dim']}"
            )
        index = cls(meta["dim"], IndexKind(meta["kind"]), IndexParams(**meta["params"]))
        index._index = loaded
        index._tombstones = set(meta["tombstones"])
        index.build_recall = meta["build_recall"]
        return index
