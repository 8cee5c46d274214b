"""The prefix index of autocomplete: the top completions of a prefix by time-decayed frequency.

``CompletionIndex`` is static and compact: the normalized queries in a ``marisa-trie`` (keys ↔ ids),
their scores in a float32 array by id, and, for every prefix with more than ``scan`` completions,
its top ``k`` ids precomputed (a ``marisa_trie.BytesTrie`` from the prefix to the packed ids). A
prefix with few completions is answered by enumerating them in the trie and taking the best.

``LiveCompletions`` puts what arrived since the index was built beside it: each new event adds its
decayed weight to a delta (a dict, and its keys sorted for prefix ranges), a lookup merges the
index's candidates with the delta's, and ``rebuild`` folds the delta into a new index (built off
the lock, swapped in one assignment) so that reads never wait for a build.

Scores decay with a half-life ``h``: an event at ``t`` weighs ``2 ** ((t - ref) / h)`` at a
reference time ``ref``. Every score shares ``ref``, so their order is that of the decayed counts at
any time; ``rebuild`` moves ``ref`` to its own time, and an event far ahead of ``ref`` moves it at
once (the delta rescaled, the index's scores by a factor until the next build), so nothing
overflows however long the log.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping

import numpy as np

_TOP = "\U0010ffff"  # above every character: prefix + _TOP bounds the keys starting with prefix


class CompletionIndex:
    def __init__(self, scores: Mapping[str, float], k: int = 10, scan: int = 64) -> None:
        import marisa_trie

        self.k, self.scan = k, scan
        self.trie = marisa_trie.Trie(list(scores))
        self.scores = np.zeros(len(self.trie), dtype=np.float32)
        for key, score in scores.items():
            self.scores[self.trie.key_id(key)] = score
        self.hot = marisa_trie.BytesTrie(self._top_of_busy_prefixes(scores))

    def _top_of_busy_prefixes(self, scores: Mapping[str, float]) -> list[tuple[str, bytes]]:
        """(prefix, its top k ids packed as uint32) for every prefix with more than ``scan``
        completions, found by splitting the sorted keys one character further at a time, only where
        a range is still busy."""
        keys = sorted(scores)
        ids = np.fromiter((self.trie.key_id(k) for k in keys), dtype=np.uint32, count=len(keys))
        ordered = self.scores[ids]  # (N,) scores in key order
        out: list[tuple[str, bytes]] = []

        def keep(prefix: str, lo: int, hi: int) -> None:
            span = ordered[lo:hi]
            k = min(self.k, hi - lo)
            best = np.argpartition(-span, k - 1)[:k] if hi - lo > k else np.arange(hi - lo)
            best = best[np.argsort(-span[best], kind="stable")]
            out.append((prefix, ids[lo + best].tobytes()))

        if len(keys) > self.scan:
            keep("", 0, len(keys))
        stack = [(0, len(keys), 0)]
        while stack:
            lo, hi, depth = stack.pop()
            i = lo
            while i < hi and len(keys[i]) == depth:  # the prefix itself, a query of its own
                i += 1
            while i < hi:
                prefix = keys[i][: depth + 1]
                j = bisect.bisect_left(keys, prefix + _TOP, i, hi)
                if j - i > self.scan:
                    keep(prefix, i, j)
                    stack.append((i, j, depth + 1))
                i = j
        return out

    def __len__(self) -> int:
        return len(self.trie)

    @property
    def nbytes(self) -> int:
        """Bytes of the trie, the scores and the precomputed top ids."""
        return len(self.trie.tobytes()) + self.scores.nbytes + len(self.hot.tobytes())

    def score(self, key: str) -> float:
        found = self.trie.get(key)
        return float(self.scores[found]) if found is not None else 0.0

    def knows_prefix(self, prefix: str) -> bool:
        return next(self.trie.iterkeys(prefix), None) is not None

    def complete(self, prefix: str, n: int) -> list[tuple[str, float]]:
        """The best ``n`` (at most ``k``) completions of ``prefix``, best first, as (query, score)."""
        packed = self.hot.get(prefix)
        if packed:
            ids = np.frombuffer(packed[0], dtype=np.uint32)[:n]
            return [(self.trie.restore_key(int(i)), float(self.scores[i])) for i in ids]
        found = self.trie.items(prefix)
        if not found:
            return []
        ids = np.fromiter((i for _, i in found), dtype=np.int64, count=len(found))
        scores = self.scores[ids]
        order = np.argsort(-scores, kind="stable")[:n]
        return [(found[o][0], float(scores[o])) for o in order]


class LiveCompletions:
    """A ``CompletionIndex`` and the counts that arrived after it was built (see the module)."""

    def __init__(self, half_life_s: float, k: int = 10, scan: int = 64, ref_s: float = 0.0) -> None:
        self.half_life_s, self.k, self.scan = half_life_s, k, scan
        self.ref_s = ref_s
        self.index = CompletionIndex({}, k, scan)
        self.delta: dict[str, float] = {}
        self.delta_keys: list[str] = []  # sorted
        self.index_scale = 1.0  # the index's scores x this are at ref_s (moved since the build)
        self.lock = threading.Lock()

    MAX_EXPONENT = 60.0  # weights stay below 2 ** 60: float64 sums keep their precision

    def weight(self, t_s: float) -> float:
        return float(2.0 ** ((t_s - self.ref_s) / self.half_life_s))

    def _rebase(self, ref_s: float) -> None:
        factor = 2.0 ** ((self.ref_s - ref_s) / self.half_life_s)
        for query in self.delta:
            self.delta[query] *= factor
        self.index_scale *= factor
        self.ref_s = ref_s

    def add(self, queries: Iterable[tuple[str, float]]) -> None:
        """Count normalized queries (query, event time in seconds); "" is skipped."""
        with self.lock:
            for query, t_s in queries:
                if not query:
                    continue
                if (t_s - self.ref_s) / self.half_life_s > self.MAX_EXPONENT:
                    self._rebase(t_s)
                if query not in self.delta:
                    bisect.insort(self.delta_keys, query)
                    self.delta[query] = 0.0
                self.delta[query] += self.weight(t_s)

    def score(self, query: str) -> float:
        index = self.index
        with self.lock:
            return index.score(query) * self.index_scale + self.delta.get(query, 0.0)

    def knows_prefix(self, prefix: str) -> bool:
        index = self.index
        if index.knows_prefix(prefix):
            return True
        if not self.delta_keys:
            return False
        with self.lock:
            at = bisect.bisect_left(self.delta_keys, prefix)
            return at < len(self.delta_keys) and self.delta_keys[at].startswith(prefix)

    def complete(self, prefix: str, n: int) -> list[tuple[str, float]]:
        """The best ``n`` completions over the index and what arrived since, best first."""
        index = self.index  # one read: a rebuild swaps it whole
        with self.lock:
            lo = bisect.bisect_left(self.delta_keys, prefix)
            hi = bisect.bisect_left(self.delta_keys, prefix + _TOP, lo)
            fresh = {q: self.delta[q] for q in self.delta_keys[lo:hi]}
            scale = self.index_scale
        merged = {q: s * scale for q, s in index.complete(prefix, n)}
        for query, added in fresh.items():
            merged[query] = merged.get(query, index.score(query) * scale) + added
        return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def rebuild(self, now_s: float) -> None:
        """Fold the delta into a new index at the reference time ``now_s`` (reads go on meanwhile:
        counts added during the build stay in the delta)."""
        with self.lock:
            taken = dict(self.delta)
            old, old_scale = self.index, self.index_scale
            now_s = max(now_s, self.ref_s)  # never back: events ahead of the clock moved it
        scale = 2.0 ** ((self.ref_s - now_s) / self.half_life_s)
        scores = {key: float(old.scores[i]) * old_scale * scale for key, i in old.trie.items()}
        for query, added in taken.items():
            scores[query] = scores.get(query, 0.0) + added * scale
        built = CompletionIndex(scores, self.k, self.scan)
        with self.lock:
            for query, added in taken.items():  # what was folded leaves the delta, later counts stay
                left = self.delta.get(query, 0.0) - added
                if left > 0:
                    self.delta[query] = left * scale
                else:
                    self.delta.pop(query, None)
            for query in list(self.delta):
                if query not in taken:
                    self.delta[query] *= scale
            self.delta_keys = sorted(self.delta)
            self.index, self.ref_s, self.index_scale = built, now_s, 1.0


def one_edit(prefix: str, alphabet: str, upto: int | None = None) -> Iterable[str]:
    """The strings one edit from ``prefix`` (deletion, transposition, substitution, insertion over
    ``alphabet``) at positions up to ``upto`` (all by default), without repeats and without
    ``prefix`` itself."""
    seen = {prefix}
    last = len(prefix) if upto is None else min(upto, len(prefix))
    for i in range(last + 1):
        candidates = []
        if i < len(prefix):
            candidates.append(prefix[:i] + prefix[i + 1 :])
            if i + 1 < len(prefix):
                candidates.append(prefix[:i] + prefix[i + 1] + prefix[i] + prefix[i + 2 :])
            candidates.extend(prefix[:i] + c + prefix[i + 1 :] for c in alphabet)
        candidates.extend(prefix[:i] + c + prefix[i:] for c in alphabet)
        for candidate in candidates:
            if candidate not in seen:
                seen.add(candidate)
                yield candidate


class SortedArrayIndex:
    """The sorted-array layout, measured beside ``CompletionIndex`` (benchmarks/autocomplete.py): the
    keys' UTF-8 bytes sorted and joined in one buffer with uint32 offsets, their scores in key order,
    the top ``k`` of every prefix with more than ``scan`` completions precomputed (a dict from the
    prefix to its ids), and the others found by binary search for the prefix's range."""

    def __init__(self, scores: Mapping[str, float], k: int = 10, scan: int = 64) -> None:
        self.k, self.scan = k, scan
        keys = sorted(scores)  # code point order = UTF-8 byte order
        encoded = [key.encode() for key in keys]
        self.offsets = np.zeros(len(keys) + 1, dtype=np.uint32)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = b"".join(encoded)
        self.scores = np.fromiter((scores[key] for key in keys), dtype=np.float32, count=len(keys))
        self.hot: dict[str, np.ndarray] = {}
        stack = [(0, len(keys), 0)]
        if len(keys) > scan:
            self.hot[""] = self._top(0, len(keys))
        while stack:
            lo, hi, depth = stack.pop()
            i = lo
            while i < hi and len(keys[i]) == depth:
                i += 1
            while i < hi:
                prefix = keys[i][: depth + 1]
                j = bisect.bisect_left(keys, prefix + _TOP, i, hi)
                if j - i > scan:
                    self.hot[prefix] = self._top(i, j)
                    stack.append((i, j, depth + 1))
                i = j

    def _top(self, lo: int, hi: int) -> np.ndarray:
        span = self.scores[lo:hi]
        k = min(self.k, hi - lo)
        best = np.argpartition(-span, k - 1)[:k] if hi - lo > k else np.arange(hi - lo)
        return (lo + best[np.argsort(-span[best], kind="stable")]).astype(np.uint32)

    def key(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].decode()

    def _bound(self, target: bytes, lo: int, hi: int) -> int:
        """The first index whose key is >= ``target`` (bytes), in [lo, hi)."""
        offsets, blob = self.offsets, self.blob
        while lo < hi:
            mid = (lo + hi) // 2
            if blob[offsets[mid] : offsets[mid + 1]] < target:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @property
    def nbytes(self) -> int:
        import sys

        hot = sum(sys.getsizeof(p) + a.nbytes + 112 for p, a in self.hot.items())  # 112: array header
        return len(self.blob) + self.offsets.nbytes + self.scores.nbytes + hot + sys.getsizeof(self.hot)

    def complete(self, prefix: str, n: int) -> list[tuple[str, float]]:
        ids = self.hot.get(prefix)
        if ids is None:
            encoded = prefix.encode()
            lo = self._bound(encoded, 0, len(self.scores))
            hi = self._bound(encoded + b"\xff", lo, len(self.scores))
            if lo == hi:
                return []
            span = self.scores[lo:hi]
            ids = lo + np.argsort(-span, kind="stable")[:n]
        return [(self.key(int(i)), float(self.scores[i])) for i in ids[:n]]
