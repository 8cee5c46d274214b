"""Autocomplete in the separate topology: the worker counts the queries and publishes them through
the state store; each API process follows.

With the Redis bus, ``recstack worker`` applies the events and the API processes only serve, so
the queries are counted where the events are read. The worker's :class:`Publisher` counts each
batch it applies (an :class:`Autocomplete` of its own) and writes, in the same store write as the
feed state's snapshot that acknowledges those deliveries (a ``FeedWorker`` checkpoint part):

- ``key:batch:<chain>:<n>``: the query events of checkpoint n (ids, times, texts, users, request
  ids) and, for the topic boost, its engagements resolved to (user, topic, query searched);
  ``key:seq``: the last n written;
- ``key:snapshot``, every ``[autocomplete] publish_full_s`` and at a chain's first checkpoint: the
  counts (every normalized query's decayed score at one reference time), the users' recent
  queries and the topic boost's counts, with the n it includes; the batches up to it are then deleted;
- ``key:chain``: a new id when the worker starts a new consumer group (it reads the log from its
  beginning again, so the counts start again from nothing).

A :class:`Follower` (each API process, every ``[serving] state_sync_s``) counts the batches after
its position, or loads the snapshot when the chain changed or a batch it lacks was deleted. A
query's events reach the API processes one worker checkpoint and one sync after they are posted.
What a checkpoint acknowledges is in the same write as its batch, so a worker that restarts from
its last snapshot neither loses nor double counts a query: the deliveries it had not acknowledged
come again and go into the next batch.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
import zlib
from typing import Any

import numpy as np

from recstack.autocomplete.service import Autocomplete
from recstack.config import AutocompleteConfig
from recstack.errors import CheckpointError
from recstack.features.definitions import exact_us
from recstack.features.stores import KVStore
from recstack.schema import Event, SearchQuery

log = logging.getLogger(__name__)

AUTOCOMPLETE_KEY = "recstack:autocomplete"


def encode_counts(autocomplete: Autocomplete, chain: str, seq: int) -> bytes:
    """``autocomplete``'s counts and users' queries as one blob (``seq``: the last batch in it)."""
    scores, ref_s, users, watermark = autocomplete.counts()
    keys = "\n".join(scores).encode()  # a normalized query holds no newline (whitespace is collapsed)
    meta = {
        "chain": chain,
        "seq": seq,
        "ref_s": ref_s,
        "half_life_s": autocomplete.cfg.half_life_s,
        "watermark_us": watermark,
        "n": len(scores),
    }
    out = io.BytesIO()
    np.savez_compressed(
        out,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        keys=np.frombuffer(keys, dtype=np.uint8),
        scores=np.fromiter(scores.values(), dtype=np.float64, count=len(scores)),
        users=np.frombuffer(json.dumps(users).encode(), dtype=np.uint8),
        topics=np.frombuffer(json.dumps(autocomplete.topic_counts()).encode(), dtype=np.uint8),
    )
    return out.getvalue()


def decode_counts(blob: bytes) -> tuple[dict[str, Any], dict[str, float], dict[str, list[str]]]:
    """(meta, scores, users) of :func:`encode_counts`; CheckpointError when the blob is damaged."""
    try:
        with np.load(io.BytesIO(blob)) as z:
            meta = json.loads(z["meta"].tobytes())
            text = z["keys"].tobytes().decode()
            scores = z["scores"]
            users = json.loads(z["users"].tobytes())
            meta["topics"] = json.loads(z["topics"].tobytes()) if "topics" in z.files else {}
    except Exception as exc:
        raise CheckpointError(f"the autocomplete snapshot cannot be read: {exc}") from exc
    keys = text.split("\n") if text else []
    if len(keys) != len(scores) or len(keys) != meta.get("n"):
        raise CheckpointError(f"the autocomplete snapshot holds {len(keys)} queries and {len(scores)} scores")
    return meta, dict(zip(keys, scores.tolist(), strict=True)), users


QueryRow = tuple[str, int, str, str | None, str | None]  # event id, time (µs), text, user, request
EngagedRow = tuple[str, str, str | None]  # user, topic, the query searched (Autocomplete.engaged)


def encode_batch(rows: list[QueryRow], engaged: list[EngagedRow]) -> bytes:
    ids, times, texts, users, requests = (list(c) for c in zip(*rows, strict=True)) if rows else ([],) * 5
    body = {"ids": ids, "t": times, "q": texts, "u": users, "r": requests, "e": engaged}
    return zlib.compress(json.dumps(body).encode(), 1)


def decode_batch(blob: bytes) -> tuple[tuple[list[Any], ...], list[list[Any]]]:
    """((ids, times, texts, users, requests), engaged rows) of :func:`encode_batch`."""
    try:
        body = json.loads(zlib.decompress(blob))
        return (body["ids"], body["t"], body["q"], body["u"], body["r"]), body["e"]
    except Exception as exc:
        raise CheckpointError(f"an autocomplete batch cannot be read: {exc}") from exc


class Follower:
    """Keeps an :class:`Autocomplete` up to the worker's published counts (see the module)."""

    def __init__(self, store: KVStore, autocomplete: Autocomplete, key: str = AUTOCOMPLETE_KEY) -> None:
        self.store, self.autocomplete, self.key = store, autocomplete, key
        self.chain: str | None = None
        self.seq = 0
        self.resolves = False  # keeps what resolves engagements to topics (the worker's publisher)

    def sync(self) -> int:
        """Count what was published since the last call; returns the queries counted (a snapshot
        loaded counts as its number of distinct queries)."""
        raw_chain, raw_seq = self.store.get_many([self.key + ":chain", self.key + ":seq"])
        if raw_chain is None:
            return 0  # no worker has published yet
        chain, seq = raw_chain.decode(), int(raw_seq or 0)
        counted = 0
        for _ in range(2):  # a snapshot loaded, then its batches; again if one went meanwhile
            if chain != self.chain:
                loaded = self._load(chain)
                if loaded is None:
                    return counted
                counted += loaded
            step, complete = self._batches(seq)
            counted += step
            if complete:
                break
            self.chain = None  # a batch it lacks was folded into a newer snapshot: load that
        return counted

    def _load(self, chain: str) -> int | None:
        (blob,) = self.store.get_many([self.key + ":snapshot"])
        if blob is None:
            return None
        meta, scores, users = decode_counts(blob)
        if meta["chain"] != chain:  # written between the two reads: the next sync takes it
            return None
        half_life = float(meta["half_life_s"])
        if half_life != self.autocomplete.cfg.half_life_s:  # the scores decay as they were counted
            log.warning(
                "the worker counts queries with half_life_s = %s, this process's config says %s: the "
                "worker's is used",
                half_life,
                self.autocomplete.cfg.half_life_s,
            )
        self.autocomplete.restore(scores, float(meta["ref_s"]), users, meta.get("watermark_us"), half_life)
        self.autocomplete.restore_topics(meta["topics"], resolves=self.resolves)
        self.chain, self.seq = chain, int(meta["seq"])
        return len(scores)

    def _batches(self, seq: int) -> tuple[int, bool]:
        """Count the chain's batches after this position up to ``seq``; (counted, none missing)."""
        if seq <= self.seq:
            return 0, True
        names = [f"{self.key}:batch:{self.chain}:{n}" for n in range(self.seq + 1, seq + 1)]
        counted = 0
        for n, blob in enumerate(self.store.get_many(names), start=self.seq + 1):
            if blob is None:
                return counted, False
            columns, engaged = decode_batch(blob)
            counted += self.autocomplete.count_rows(*columns)
            self.autocomplete.apply_engaged(engaged)
            self.seq = n
        return counted, True


class Publisher(Follower):
    """The separate worker's side: counts the query events of each batch applied and writes them
    with the checkpoint that acknowledges them (a ``FeedWorker`` checkpoint part)."""

    def __init__(
        self,
        cfg: AutocompleteConfig,
        store: KVStore,
        resume: bool,
        key: str = AUTOCOMPLETE_KEY,
        history: Any = None,
    ) -> None:
        super().__init__(store, Autocomplete(cfg), key)
        self.cfg = cfg
        self.resolves = True
        self.rows: list[QueryRow] = []  # counted, not written yet
        self.engaged_rows: list[EngagedRow] = []  # the same for the topic boost
        self.writing_engaged = 0
        self.writing = 0  # rows in the write under way
        self.next_seq = 0
        self.folding = False
        self.last_full = -float("inf")
        self.full_due = True
        if resume:  # the worker goes on with its consumer group: so do the counts
            self.sync()
            if self.chain is None and history is not None:
                # counts never published (a worker of an older version): the log's queries, once
                log.info("autocomplete counts the bus's query history (none was published)")
                self.autocomplete.load_history(history)
        if self.chain is None:
            self.chain, self.seq = uuid.uuid4().hex[:12], 0
        else:
            self.last_full, self.full_due = time.monotonic(), False

    def observe(self, events: list[Event]) -> None:
        found = [e for e in events if isinstance(e, SearchQuery)]
        if found:
            rows = [(e.event_id, exact_us(e.timestamp), e.query, e.user_id, e.request_id) for e in found]
            ids, times, texts, users, requests = (list(c) for c in zip(*rows, strict=True))
            self.autocomplete.count_rows(ids, times, texts, users, requests)
            self.rows.extend(rows)
            self.autocomplete.maybe_rebuild()  # keeps its delta small (the sorted keys' inserts)
        if self.cfg.topic_weight:  # resolved here (the items' topics are kept here only)
            engaged = self.autocomplete.engaged(events)
            self.autocomplete.apply_engaged(engaged)
            self.engaged_rows.extend(engaged)

    def writes(self) -> dict[str, bytes]:
        """What the next checkpoint writes: the rows counted since the last one as a batch, or a
        snapshot of every count when one is due (it holds those rows: no batch is written)."""
        self.writing, self.writing_engaged = len(self.rows), len(self.engaged_rows)
        self.next_seq = self.seq + 1 if self.rows or self.engaged_rows else self.seq
        self.folding = self.full_due or time.monotonic() - self.last_full >= self.cfg.publish_full_s
        out: dict[str, bytes] = {}
        if self.folding:
            out[self.key + ":snapshot"] = encode_counts(self.autocomplete, str(self.chain), self.next_seq)
        elif self.next_seq > self.seq:
            batch = encode_batch(self.rows, self.engaged_rows)
            out[f"{self.key}:batch:{self.chain}:{self.next_seq}"] = batch
        if out:
            out[self.key + ":seq"] = str(self.next_seq).encode()
            out[self.key + ":chain"] = str(self.chain).encode()
        return out

    def written(self) -> None:
        """The checkpoint's write went in."""
        self.rows = self.rows[self.writing :]
        self.engaged_rows = self.engaged_rows[self.writing_engaged :]
        folded_from = self.seq
        self.seq = self.next_seq
        if self.folding:  # the batches before the snapshot are in it
            self.last_full, self.full_due = time.monotonic(), False
            old = [f"{self.key}:batch:{self.chain}:{n}" for n in range(1, folded_from + 1)]
            try:
                self.store.delete_many(old)
            except Exception as exc:  # left behind, they are never read again
                log.warning("old autocomplete batches not deleted: %s", exc)

    def failed(self) -> None:
        """The checkpoint's write failed: its rows go in the next one."""
        self.writing = self.writing_engaged = 0


def publish_autocomplete(worker: Any, cfg: AutocompleteConfig, resumed: bool) -> Publisher:
    """Attach a :class:`Publisher` to a separate ``FeedWorker`` (``resumed``: it goes on with its
    stored consumer group)."""
    publisher = Publisher(cfg, worker.store, resumed, history=worker.log)
    worker.listeners.append(publisher.observe)
    worker.parts.append(publisher)
    return publisher
