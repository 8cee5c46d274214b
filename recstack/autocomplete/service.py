"""Autocomplete as the API serves it: the live prefix index over the log's query events, personal
boosts, one-edit typo tolerance, a block list and the safety model's check of what is suggested.

Counting: the worker hands every batch it applies to ``observe_events`` (the embedded default:
the worker runs in the API's process), so a query is suggestible as soon as the worker has read
it. A separate worker publishes its counts instead, and the API processes follow them (sync.py).
``load_history(log)`` counts the log's query events when the API starts on a worker that resumed a
snapshot (a worker starting afresh replays the log through ``observe_events``); the ids of the
history's last ``late_s`` are remembered, so an event the worker delivers again is counted once.
``maybe_rebuild`` folds the counts into the static index every ``rebuild_s``; reads go on
meanwhile. Whether a search led to a click is in the log as a click event with the query's
``request_id``; it does not weigh in the counts yet.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recstack.autocomplete.index import CompletionIndex, LiveCompletions, one_edit
from recstack.autocomplete.normalize import normalize, normalize_prefix
from recstack.config import AutocompleteConfig
from recstack.features.definitions import exact_us
from recstack.schema import Engagement, Event, ItemUpsert, SearchQuery, row_to_event

US = 1_000_000
SEARCHES_KEPT = 100_000  # the last searches whose results' engagements are attributed to them
TOPIC_KINDS = ("click", "like", "share")  # the engagements that say a user is drawn to a topic
CORRECTED_WEIGHT = 0.5  # a completion of a one-edit variant counts half (exact completions first)

# texts -> whether each may be suggested; raises when the check cannot be made
Moderator = Callable[[list[str]], list[bool]]


@dataclass
class Suggestion:
    text: str
    score: float  # decayed count, with the personal boost
    corrected: bool = False  # a completion of a one-edit variant of the prefix


class Autocomplete:
    def __init__(self, cfg: AutocompleteConfig, moderator: Moderator | None = None) -> None:
        self.cfg = cfg
        self.live = LiveCompletions(cfg.half_life_s, cfg.max_n, cfg.scan, ref_s=time.time())
        self.stop_words = frozenset(normalize(w) for w in cfg.stop_words)
        self.blocked = frozenset(normalize(w) for w in cfg.block_list)
        self.moderator = moderator
        self.users: dict[str, deque[str]] = {}
        self.watermark_us: int | None = None  # the newest event time read
        self.recent: dict[str, int] = {}  # event id -> time, for the events within late_s of it
        self.kept = 0  # ids kept at the last pruning
        self.counted = 0
        self.version = 0  # moves with every count and rebuild: the cache's key
        self.cache: OrderedDict[tuple[str, int, int], list[Suggestion]] = OrderedDict()
        self.allowed: dict[str, bool] = {}  # the moderator's answers, per suggested text
        self.alphabet = ""
        self.last_rebuild = time.monotonic()
        self.lock = threading.Lock()  # counting (the worker's thread, the history at start)
        self.build_lock = threading.Lock()  # one rebuild at a time, beside the counting
        # the topic boost (topic_weight > 0): each item's topic, the last searches' request ids, what
        # the results of each query were engaged in, and each user's last engaged topics
        self.item_topic: dict[str, str] = {}
        self.searches: OrderedDict[str, str] = OrderedDict()  # request id -> normalized query
        self.query_topics: dict[str, Counter[str]] = {}
        self.user_topics: dict[str, deque[str]] = {}

    # ------------------------------------------------------------------ counting
    def observe(self, table: Any) -> int:
        """Count the query events of an Arrow table (EVENT_SCHEMA; with the topic boost, its item
        and engagement rows too); returns how many queries were new."""
        if table.num_rows == 0:
            return 0
        if set(table.column("kind").unique().to_pylist()) != {"query"}:  # in order, as the worker would
            return sum(
                self.observe_events([row_to_event(row) for row in batch.to_pylist()])
                for batch in table.to_batches(max_chunksize=4096)
            )
        return self.count_rows(
            table.column("event_id").to_pylist(),
            table.column("timestamp").cast("int64").to_pylist(),
            table.column("query").to_pylist(),
            table.column("user_id").to_pylist(),
            table.column("request_id").to_pylist(),
        )

    def observe_events(self, events: Sequence[Event]) -> int:
        """Count the query events among ``events`` (a batch the worker applied), and with the topic
        boost what their results were engaged in; returns how many queries were new."""
        found = [e for e in events if isinstance(e, SearchQuery)]
        counted = 0
        if found:
            counted = self.count_rows(
                [e.event_id for e in found],
                [exact_us(e.timestamp) for e in found],
                [e.query for e in found],
                [e.user_id for e in found],
                [e.request_id for e in found],
            )
        if self.cfg.topic_weight:
            self.apply_engaged(self.engaged(events))
        return counted

    def engaged(self, events: Sequence[Event]) -> list[tuple[str, str, str | None]]:
        """(user, topic, the query searched or None) of each click, like or share among ``events``
        on an item whose topic is known (``[autocomplete] topic_attribute`` of its upsert)."""
        rows: list[tuple[str, str, str | None]] = []
        with self.lock:
            for event in events:
                if isinstance(event, ItemUpsert):
                    topic = event.attributes.get(self.cfg.topic_attribute)
                    if topic is None:
                        self.item_topic.pop(event.item_id, None)
                    else:
                        self.item_topic[event.item_id] = sys.intern(str(topic))
                elif isinstance(event, Engagement) and event.kind in TOPIC_KINDS:
                    if event.event_id in self.recent:  # delivered again after the history was read
                        continue
                    self.recent[event.event_id] = exact_us(event.timestamp)
                    known = self.item_topic.get(event.item_id)
                    if known is not None:
                        query = self.searches.get(event.request_id) if event.request_id else None
                        rows.append((event.user_id, known, query))
        return rows

    def apply_engaged(self, rows: Sequence[Sequence[Any]]) -> None:
        """Count (user, topic, query or None) rows of :meth:`engaged` into the topic boost."""
        if not rows:
            return
        with self.lock:
            for user, topic, query in rows:
                mine = self.user_topics.get(user)
                if mine is None:
                    mine = self.user_topics[user] = deque(maxlen=max(self.cfg.history, 1))
                mine.append(topic)
                if query is not None:
                    self.query_topics.setdefault(query, Counter())[topic] += 1
            self.version += 1

    def count_rows(
        self,
        ids: list[str],
        times: list[int],
        texts: list[str],
        users: list[str | None],
        requests: list[str | None] | None = None,
    ) -> int:
        """Count query events given as columns (event ids, times in µs, texts, users, requests);
        returns how many were new."""
        if not ids:
            return 0
        with self.lock:
            return self._count(ids, times, texts, users, requests or [None] * len(ids))

    def _count(
        self,
        ids: list[str],
        times: list[int],
        texts: list[str],
        users: list[str | None],
        requests: list[str | None],
    ) -> int:
        added = []
        for event_id, t, text, user, request in zip(ids, times, texts, users, requests, strict=True):
            if event_id in self.recent:
                continue
            self.recent[event_id] = t
            query = normalize(text, self.stop_words, self.cfg.max_chars)
            if not query:
                continue
            if request is not None and self.cfg.topic_weight:  # the clicks on its results name it
                self.searches[request] = query
                if len(self.searches) > SEARCHES_KEPT:
                    self.searches.popitem(last=False)
            added.append((query, t / US))
            if user is not None and self.cfg.history:
                history = self.users.get(user)
                if history is None:
                    history = self.users[user] = deque(maxlen=self.cfg.history)
                history.append(query)
        self.live.add(added)
        newest = max(times)
        if self.watermark_us is None or newest > self.watermark_us:
            self.watermark_us = newest
        floor = self.watermark_us - int(self.cfg.late_s * US)
        if len(self.recent) > max(10_000, 2 * self.kept):  # amortized: pruned when it doubled
            self.recent = {e: t for e, t in self.recent.items() if t >= floor}
            self.kept = len(self.recent)
        if added:
            self.counted += len(added)
            self.version += 1
        return len(added)

    def load_history(self, log: Any) -> int:
        """Count every query event of the log (with the topic boost, the items and engagements
        too), then build the index; returns how many queries."""
        kinds = ["query", "item", *TOPIC_KINDS] if self.cfg.topic_weight else ["query"]
        new = self.observe(log.table(kinds=kinds))
        with self.build_lock:
            self.rebuild()
        return new

    def rebuild(self) -> None:
        self.live.rebuild(time.time())
        self._built()

    def _built(self) -> None:
        sample = itertools.islice(self.live.index.trie.iterkeys(), 200_000)  # not all keys as a list
        counts = Counter(c for key in sample for c in key)
        total = sum(counts.values()) or 1
        # the characters typos are made of: those of at least 0.1% of the keys' characters, at most 40
        self.alphabet = "".join(c for c, k in counts.most_common(40) if k >= total / 1_000)
        self.last_rebuild = time.monotonic()
        self.version += 1

    def counts(self) -> tuple[dict[str, float], float, dict[str, list[str]], int | None]:
        """(every normalized query's decayed score at the reference time, that time in s, each
        user's recent queries, the newest event time read in µs): what a follower in another
        process starts from (sync.py)."""
        live = self.live
        with self.lock:
            with live.lock:  # the index and its delta as one (a rebuild swaps both under it)
                index, scale, delta, ref_s = live.index, live.index_scale, dict(live.delta), live.ref_s
            users = {user: list(history) for user, history in self.users.items()}
            watermark = self.watermark_us
        scores = {key: float(index.scores[i]) * scale for key, i in index.trie.items()}
        for query, added in delta.items():
            scores[query] = scores.get(query, 0.0) + added
        return scores, ref_s, users, watermark

    def topic_counts(self) -> dict[str, Any]:
        """The topic boost's state: each user's last engaged topics, each query's results' topics,
        and what resolves an engagement (each item's topic, the last searches' request ids)."""
        with self.lock:
            return {
                "users": {user: list(topics) for user, topics in self.user_topics.items()},
                "queries": {query: dict(counts) for query, counts in self.query_topics.items()},
                "items": dict(self.item_topic),
                "searches": list(self.searches.items()),
            }

    def restore_topics(self, topics: dict[str, Any], resolves: bool = False) -> None:
        """Start again from :meth:`topic_counts` of another process; ``resolves``: with what
        resolves engagements too (the process that reads the events, not one that follows it)."""
        size = max(self.cfg.history, 1)
        users = {user: deque(kept, maxlen=size) for user, kept in topics.get("users", {}).items()}
        queries = {query: Counter(counts) for query, counts in topics.get("queries", {}).items()}
        with self.lock:
            self.user_topics, self.query_topics = users, queries
            if resolves:
                self.item_topic = {item: sys.intern(t) for item, t in topics.get("items", {}).items()}
                self.searches = OrderedDict((r, q) for r, q in topics.get("searches", []))
            self.version += 1

    def restore(
        self,
        scores: dict[str, float],
        ref_s: float,
        users: dict[str, list[str]],
        watermark_us: int | None,
        half_life_s: float | None = None,
    ) -> None:
        """Start again from :meth:`counts` of another process (what was counted here is dropped),
        decaying with ``half_life_s`` (the one they were counted with) from now on."""
        half_life = half_life_s or self.cfg.half_life_s
        live = LiveCompletions(half_life, self.cfg.max_n, self.cfg.scan, ref_s=ref_s)
        live.index = CompletionIndex(scores, self.cfg.max_n, self.cfg.scan)
        kept = {u: deque(h, maxlen=self.cfg.history) for u, h in users.items()} if self.cfg.history else {}
        with self.lock, self.build_lock:
            self.live, self.users = live, kept
            self.recent, self.kept, self.watermark_us = {}, 0, watermark_us
            self._built()

    def maybe_rebuild(self) -> bool:
        """Fold the counts into the index when ``rebuild_s`` has passed since the last build."""
        if time.monotonic() - self.last_rebuild < self.cfg.rebuild_s or not self.live.delta:
            return False
        with self.build_lock:
            self.rebuild()
        return True

    # ------------------------------------------------------------------ suggesting
    def suggest(
        self, text: str, user_id: str | None = None, n: int | None = None, topic_boost: bool = True
    ) -> list[Suggestion]:
        """The best ``n`` completions of what the user typed, checked (see the module);
        ``topic_boost=False`` leaves the topic boost out (to measure it)."""
        n = n or self.cfg.default_n
        prefix = normalize_prefix(text, self.cfg.max_chars)
        key = (prefix, n, self.version)
        if user_id is None and key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        want = self.cfg.max_n  # ask for more than n: filtering may drop some
        found = {q: Suggestion(q, s) for q, s in self.live.complete(prefix, want)}
        history = self.users.get(user_id) if user_id is not None else None
        if history and self.cfg.personal_weight:
            for query, times in Counter(q for q in history if q.startswith(prefix)).items():
                base = found[query].score if query in found else self.live.score(query)
                found[query] = Suggestion(query, base * (1 + self.cfg.personal_weight * times))
        topics = self.user_topics.get(user_id) if user_id is not None and topic_boost else None
        if topics and self.cfg.topic_weight:
            # the share of the user's engagements in the topics the query's results were engaged in
            share, total = Counter(topics), len(topics)
            for query, suggestion in found.items():
                them = self.query_topics.get(query)
                if them:
                    overlap = sum(c * share.get(t, 0) for t, c in them.items())
                    affinity = overlap / (sum(them.values()) * total)
                    suggestion.score *= 1 + self.cfg.topic_weight * affinity
        if len(found) < self.cfg.typo_below and len(prefix.strip()) >= 3:
            # an edit after the longest prefix the index knows cannot make the whole one known
            known, unknown = 0, len(prefix) + 1  # prefix[:known] is known, prefix[:unknown] is not
            if self.live.knows_prefix(prefix):
                known = unknown = len(prefix)
            while unknown - known > 1:
                mid = (known + unknown) // 2
                known, unknown = (mid, unknown) if self.live.knows_prefix(prefix[:mid]) else (known, mid)
            for variant in one_edit(prefix, self.alphabet, known):
                if not self.live.knows_prefix(variant):
                    continue
                for query, score in self.live.complete(variant, want):
                    if query not in found:
                        found[query] = Suggestion(query, score * CORRECTED_WEIGHT, corrected=True)
        ranked = sorted(found.values(), key=lambda s: (s.corrected, -s.score, s.text))
        out = self._checked(ranked, n)
        if user_id is None and self.cfg.cache_size:
            self.cache[key] = out
            while len(self.cache) > self.cfg.cache_size:
                self.cache.popitem(last=False)
        return out

    def _checked(self, ranked: list[Suggestion], n: int) -> list[Suggestion]:
        """The first ``n`` that hold no blocked word and that the moderator allows. Raises when the
        moderator cannot check a text it has not checked before (nothing unchecked is suggested)."""
        kept = [s for s in ranked if not self.blocked.intersection(s.text.split(" "))]
        if self.moderator is not None:
            unknown = [s.text for s in kept[: 2 * n] if s.text not in self.allowed]
            if unknown:
                if len(self.allowed) > 200_000:
                    self.allowed.clear()
                self.allowed.update(zip(unknown, self.moderator(unknown), strict=True))
            kept = [s for s in kept[: 2 * n] if self.allowed.get(s.text, False)]
        return kept[:n]
