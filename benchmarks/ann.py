"""Approximate nearest neighbours at catalog scale: HNSW recall@100 against exact search, single-thread
queries per second at that recall, build time and bytes per item; exact (flat) search as the floor.

Vectors: 1M x 64-d, clustered like learned item embeddings (1,000 centres plus noise), L2-normalized;
queries are 1,000 fresh draws from the same mixture. efSearch is raised until recall@100 >= 0.99.

    .venv/bin/python benchmarks/ann.py [--quick] [--items N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss
import numpy as np
from _results import record

from recstack.index.faiss_index import IndexKind, IndexParams, ItemIndex

DIM, K = 64, 100


def mixture(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = centres[rng.integers(len(centres), size=n)] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k items")
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args()
    n = 100_000 if args.quick else args.items
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1_000, DIM)).astype(np.float32)
    vectors = mixture(n, centres, rng)
    queries = mixture(1_000, centres, rng)

    faiss.omp_set_num_threads(1)
    exact = ItemIndex(DIM, IndexKind.flat).build(vectors)
    started = time.perf_counter()
    _, truth = exact.search(queries, K)
    exact_qps = len(queries) / (time.perf_counter() - started)

    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    hnsw = ItemIndex(DIM, IndexKind.hnsw, IndexParams(hnsw_m=32, ef_construction=200)).build(
        vectors, check_queries=0
    )
    build_s = time.perf_counter() - started
    bytes_per_item = len(faiss.serialize_index(hnsw._index)) / n

    faiss.omp_set_num_threads(1)
    chosen: tuple[int, float, float] | None = None
    for ef in (48, 64, 80, 96, 128, 192, 256, 384, 512, 768, 1024):
        hnsw.tune(ef_search=ef)
        started = time.perf_counter()
        _, found = hnsw.search(queries, K)
        qps = len(queries) / (time.perf_counter() - started)
        recall = float(np.mean([len(np.intersect1d(t, f)) / K for t, f in zip(truth, found, strict=True)]))
        print(f"efSearch {ef}: recall@100 {recall:.4f}, {qps:,.0f} queries/s (1 thread)")
        chosen = (ef, recall, qps)
        if recall >= 0.99:
            break
    assert chosen is not None
    ef, recall, qps = chosen
    print(
        f"exact flat search: {exact_qps:,.0f} queries/s (1 thread); HNSW build {build_s:.0f}s on 2 threads, "
        f"{bytes_per_item:.0f} bytes/item"
    )
    record(
        "ann" + (" --quick" if args.quick else ""),
        {
            "items": n,
            "recall@100": round(recall, 4),
            "qps": round(qps),
            "ef_search": ef,
            "build_s": round(build_s, 1),
            "bytes_per_item": round(bytes_per_item),
            "exact_qps": round(exact_qps),
        },
        "HNSW M=32 efConstruction=200, 64-d clustered vectors, single-thread queries",
    )


if __name__ == "__main__":
    main()
