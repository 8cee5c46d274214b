"""Batch inference as Ray Data ``map_batches`` jobs, each with a local twin that gives the same
answer in this process:

- ``item_vectors``: the item tower over the whole catalog (the vectors the ANN index is built
  from); each worker of an actor pool holds one copy of the model.
- ``candidates``: the two-tower's top k for every user offline (the retriever's ONNX user tower and
  its FAISS index, loaded once per actor from the bundle folder every node sees).
- ``safety_scores``: the safety champion over the catalog's item texts (one scorer per actor).

Rows travel as Arrow batches with a row number, and results are put back in row order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recstack.config import ComputeConfig, Engine
from recstack.scale.engine import check_visible, cluster_cpus, connect, job


def _actors(compute: ComputeConfig) -> int:
    """Actors of a batch-inference pool: ``[compute] workers``, at most one per CPU of the cluster
    (each holds one CPU; the job's input is in memory, so no read task waits for a CPU)."""
    return max(1, min(compute.workers, cluster_cpus()))


# ---------------------------------------------------------------------- item tower
class _ItemTower:
    def __init__(self, model: list[Any]) -> None:
        import ray

        torch.set_num_threads(1)
        self.model = ray.get(model[0]).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("id").to_numpy()
        with torch.no_grad():
            vectors = self.model.item_vectors(torch.from_numpy(ids)).numpy().astype(np.float32)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
        return pa.table({"id": pa.array(ids), "vector": flat})


def item_vectors(model: torch.nn.Module, compute: ComputeConfig) -> np.ndarray:
    """(n_items, D) float32: the item tower of a TwoTower over its whole catalog, locally or as a
    Ray Data job (``compute.engine``)."""
    n_items = int(model.n_items)  # type: ignore[arg-type]
    if compute.engine == Engine.local:
        with torch.no_grad():
            out: np.ndarray = model.eval().all_item_vectors().numpy().astype(np.float32)  # type: ignore[operator]
        return out
    ray = connect(compute)
    with job("the item tower over the catalog", compute):
        ids = pa.table({"id": pa.array(np.arange(n_items, dtype=np.int64))})
        data = ray.data.from_arrow(_pieces(ids, _actors(compute), compute.batch_rows))  # no read tasks
        out_ds = data.map_batches(
            _ItemTower,
            fn_constructor_kwargs={"model": [ray.put(model)]},
            batch_size=compute.batch_rows,
            batch_format="pyarrow",
            concurrency=_actors(compute),
            num_cpus=1,
            max_task_retries=compute.task_retries,
        )
        table = pa.concat_tables(ray.get(out_ds.to_arrow_refs()))
    return _in_order(table, "id", "vector", n_items)


def _pieces(table: pa.Table, count: int, size: int) -> list[pa.Table]:
    """``table`` cut into blocks of at most ``size`` rows, at least ``count`` of them (one per actor
    of the pool) when it has that many rows."""
    step = max(1, min(size, -(-table.num_rows // count)))
    return [table.slice(start, step) for start in range(0, table.num_rows, step)] or [table]


def _in_order(table: pa.Table, key: str, column: str, n: int) -> np.ndarray:
    order = np.argsort(table.column(key).to_numpy(), kind="stable")
    values = table.column(column).combine_chunks()
    width = values.type.list_size
    matrix = np.asarray(values.flatten().to_numpy(), dtype=np.float32).reshape(-1, width)[order]
    if len(matrix) != n:
        raise RuntimeError(f"the job returned {len(matrix)} rows for {n}")
    return matrix


# ---------------------------------------------------------------------- candidates
CANDIDATES = pa.schema(
    [("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())]
)


def _search(retriever: Any, users: Sequence[str], histories: Sequence[Sequence[str]], k: int) -> pa.Table:
    """The retriever's top k for each (user, history), as rows (user_id, rank, item_id, score)."""
    length = retriever.history_length
    index = np.array([retriever.user_index.get(u, -1) for u in users], dtype=np.int64)
    padded = np.zeros((len(users), length), dtype=np.int64)
    known = np.zeros(len(users), dtype=bool)
    for row, history in enumerate(histories):
        items = retriever.history_ids(history)
        padded[row, : len(items)] = items
        known[row] = index[row] >= 0 or bool(items)
    out_users: list[str] = []
    out_rank: list[int] = []
    out_items: list[str] = []
    out_scores: list[float] = []
    rows = np.flatnonzero(known)
    if len(rows):
        vectors = retriever.towers.user(index[rows], padded[rows])
        scores, ids = retriever.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        for r, user_row in enumerate(rows.tolist()):
            rank = 0
            for i, s in zip(ids[r], scores[r], strict=True):
                if i >= 0:
                    out_users.append(users[user_row])
                    out_rank.append(rank)
                    out_items.append(retriever.item_ids[i])
                    out_scores.append(float(s))
                    rank += 1
    columns = [out_users, out_rank, out_items, out_scores]
    return pa.table(
        {f.name: pa.array(c, f.type) for f, c in zip(CANDIDATES, columns, strict=True)}, schema=CANDIDATES
    )


class _Candidates:
    def __init__(self, folder: str, k: int) -> None:
        from recstack.index.retriever import TwoTowerRetriever

        self.retriever = TwoTowerRetriever.load(Path(folder) / "retriever")
        self.k = k

    def __call__(self, batch: pa.Table) -> pa.Table:
        found = _search(
            self.retriever, batch.column("user_id").to_pylist(), batch.column("history").to_pylist(), self.k
        )
        order = {
            u: n
            for u, n in zip(
                batch.column("user_id").to_pylist(), batch.column("_row").to_pylist(), strict=True
            )
        }
        rows = [order[u] for u in found.column("user_id").to_pylist()]
        return found.append_column("_row", pa.array(rows, pa.int64()))


def candidates(
    folder: Path, users: Sequence[str], histories: Sequence[Sequence[str]], k: int, compute: ComputeConfig
) -> pa.Table:
    """The retriever of the bundle at ``folder``: top ``k`` items of every user (with their recent
    history, most recent first), rows (user_id, rank, item_id, score) in the users' order; users
    the towers know nothing about get no rows. Locally or as a Ray Data job."""
    folder = Path(folder).resolve()
    if compute.engine == Engine.local:
        from recstack.index.retriever import TwoTowerRetriever

        return _search(TwoTowerRetriever.load(folder / "retriever"), users, histories, k)
    ray = connect(compute)
    check_visible([str(p) for p in sorted((folder / "retriever").iterdir())], f"the bundle at {folder}")
    rows = pa.table(
        {
            "user_id": pa.array(list(users), pa.string()),
            "history": pa.array([list(h) for h in histories], pa.list_(pa.string())),
            "_row": pa.array(np.arange(len(users), dtype=np.int64)),
        }
    )
    with job("offline candidates", compute):
        out = ray.data.from_arrow(_pieces(rows, _actors(compute), compute.batch_rows)).map_batches(
            _Candidates,
            fn_constructor_kwargs={"folder": str(folder), "k": k},
            batch_size=compute.batch_rows,
            batch_format="pyarrow",
            concurrency=_actors(compute),
            num_cpus=1,
            max_task_retries=compute.task_retries,
        )
        parts = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    if not parts:
        return CANDIDATES.empty_table()
    table = pa.concat_tables(parts).sort_by([("_row", "ascending"), ("rank", "ascending")])
    return table.drop_columns(["_row"])


# ---------------------------------------------------------------------- safety scores
class _Scorer:
    def __init__(self, scorer: list[Any]) -> None:
        import ray

        torch.set_num_threads(1)
        self.scorer = ray.get(scorer[0])

    def __call__(self, batch: pa.Table) -> pa.Table:
        import json

        records = [
            {"kind": "item", "item_id": i, "text": t, "attributes": json.loads(a)}
            for i, t, a in zip(
                batch.column("item_id").to_pylist(),
                batch.column("text").to_pylist(),
                batch.column("attributes").to_pylist(),
                strict=True,
            )
        ]
        self.scorer.score_records(records)
        return pa.table(
            {
                "_row": batch.column("_row"),
                "attributes": pa.array([json.dumps(r["attributes"]) for r in records], pa.string()),
            }
        )


def safety_scores(scorer: Any, records: list[dict[str, Any]], compute: ComputeConfig, batch: int) -> None:
    """Score item records (dicts shaped like an ItemUpsert) with ``scorer`` (an ItemScorer) in
    place: ``scorer.score_records`` locally, or the same call in a Ray Data actor pool."""
    if compute.engine == Engine.local or not records:
        scorer.score_records(records)
        return
    import json

    ray = connect(compute)
    rows = pa.table(
        {
            "item_id": pa.array([r["item_id"] for r in records], pa.string()),
            "text": pa.array([r.get("text") for r in records], pa.string()),
            "attributes": pa.array([json.dumps(r.get("attributes") or {}) for r in records], pa.string()),
            "_row": pa.array(np.arange(len(records), dtype=np.int64)),
        }
    )
    with job("safety scores of the catalog", compute):
        out = ray.data.from_arrow(_pieces(rows, _actors(compute), batch)).map_batches(
            _Scorer,
            fn_constructor_kwargs={"scorer": [ray.put(scorer)]},
            batch_size=batch,
            batch_format="pyarrow",
            concurrency=_actors(compute),
            num_cpus=1,
            max_task_retries=compute.task_retries,
        )
        table = pa.concat_tables(ray.get(out.to_arrow_refs()))
    for row, attributes in zip(
        table.column("_row").to_pylist(), table.column("attributes").to_pylist(), strict=True
    ):
        records[row]["attributes"] = json.loads(attributes)


def user_histories(events: pa.Table, folder: Path) -> tuple[list[str], list[list[str]]]:
    """(users, histories): every user the events name (sorted), each with their latest distinct
    engaged items (click, like, share, comment), most recent first, as many as the bundle's
    retriever reads (its ``history_length``)."""
    import json

    import duckdb

    length = int(json.loads((Path(folder) / "retriever" / "ids.json").read_text())["history_length"])
    from recstack.schema import POSITIVE_KINDS

    kinds = ", ".join(f"'{k}'" for k in POSITIVE_KINDS)
    con = duckdb.connect()
    try:
        con.register("events", events.select(["kind", "timestamp", "user_id", "item_id", "event_id"]))
        users = [
            r[0]
            for r in con.sql(
                "SELECT DISTINCT user_id FROM events WHERE user_id IS NOT NULL ORDER BY user_id"
            ).fetchall()
        ]
        rows = con.sql(f"""
            WITH latest AS (
              SELECT user_id, item_id, max(timestamp) AS t, max(event_id) AS e FROM events
              WHERE kind IN ({kinds}) AND user_id IS NOT NULL AND item_id IS NOT NULL
              GROUP BY user_id, item_id
            )
            SELECT user_id, list(item_id ORDER BY t DESC, e DESC)[1:{length}] AS items
            FROM latest GROUP BY user_id
        """).fetchall()
    finally:
        con.close()
    found = {u: list(items) for u, items in rows}
    return users, [found.get(u, []) for u in users]
