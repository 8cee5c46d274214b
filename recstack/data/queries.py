"""A generated search log over a real vocabulary, for autocomplete's tests, benchmark and demo.

It is generated, not observed, and says so: no public search log is at hand. The vocabulary is
real: the titles of MovieLens movies (their year dropped) and their genres, and the words of the
Davidson tweets (the unsafe ones included, which is what the safety check of suggestions is for).

- Distinct queries: every title, every genre as "<genre> movies", then phrases of one to three
  vocabulary words drawn by a Zipf law over the words' frequency ranks, until ``n_queries``.
- The stream: every distinct query is searched once (the long tail of a real log), then each
  further event draws a query by a Zipf law (exponent ``zipf``) over the queries in a random
  popularity order, except that a user repeats one of their own earlier queries with probability
  ``repeat`` (what the personal boost can find). Times are spread evenly over ``days``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_WORD = re.compile(r"[a-z][a-z']+")


def vocabulary(movielens: Path | None, tweets: Path | None) -> tuple[list[str], list[str]]:
    """(phrases: titles and genre queries, words: by frequency, most frequent first)."""
    from collections import Counter

    phrases: list[str] = []
    words: Counter[str] = Counter()
    if movielens is not None:
        from recstack.data.readers import GENRES_100K, read_movielens_100k

        data = read_movielens_100k(movielens)
        for title in data.items["title"].astype(str):
            clean = _YEAR.sub("", title).strip().lower()
            if clean:
                phrases.append(clean)
                words.update(_WORD.findall(clean))
        phrases.extend(f"{genre.lower()} movies" for genre in GENRES_100K)
    if tweets is not None:
        from recstack.data.readers import read_hate_speech

        for tweet in read_hate_speech(tweets).frame["tweet"].astype(str):
            words.update(w for w in _WORD.findall(tweet.lower()) if not w.startswith("http"))
    return list(dict.fromkeys(phrases)), [w for w, _ in words.most_common()]


def distinct_queries(phrases: list[str], words: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` distinct queries: the phrases first, then generated word phrases."""
    rng = np.random.default_rng(seed)
    out = dict.fromkeys(phrases[:n])
    if not words:
        return list(out)
    ranks = np.arange(1, len(words) + 1)
    p = 1.0 / ranks
    p /= p.sum()
    while len(out) < n:
        lengths = rng.integers(1, 4, size=4 * (n - len(out)) + 16)
        drawn = rng.choice(len(words), size=int(lengths.sum()), p=p)
        at = 0
        for length in lengths:
            out.setdefault(" ".join(words[i] for i in drawn[at : at + length]))
            at += length
            if len(out) >= n:
                break
    return list(out)


@dataclass
class QueryStream:
    queries: list[str]  # the distinct queries, most popular first
    table: pa.Table  # the query events (EVENT_SCHEMA columns event_id, kind, timestamp, user_id, query)


def query_stream(
    queries: list[str],
    n_events: int,
    n_users: int,
    start_s: float,
    days: float = 7.0,
    zipf: float = 1.05,
    repeat: float = 0.3,
    seed: int = 0,
) -> QueryStream:
    """``len(queries) + n_events`` query events over ``queries`` (see the module docstring), in
    time order."""
    from recstack.schema import conform_table

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(queries))
    popular = [queries[i] for i in order]
    ranks = np.arange(1, len(popular) + 1, dtype=np.float64)
    p = ranks**-zipf
    p /= p.sum()
    drawn = np.concatenate([rng.permutation(len(popular)), rng.choice(len(popular), size=n_events, p=p)])
    n_events = len(drawn)
    users = rng.integers(0, n_users, size=n_events)
    repeats = rng.random(n_events) < repeat
    own: dict[int, list[int]] = {}
    picked = np.empty(n_events, dtype=np.int64)
    for k in range(n_events):
        mine = own.setdefault(int(users[k]), [])
        if repeats[k] and mine:
            picked[k] = mine[int(rng.integers(len(mine)))]
        else:
            picked[k] = drawn[k]
            mine.append(int(drawn[k]))
    times = start_s + np.sort(rng.random(n_events)) * days * 86_400
    table = pa.table(
        {
            "event_id": [f"gen-q{k}" for k in range(n_events)],
            "kind": ["query"] * n_events,
            "timestamp": pa.array((times * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC")),
            "user_id": [f"u{u}" for u in users],
            "query": [popular[i] for i in picked],
            "surface": ["search"] * n_events,
        }
    )
    return QueryStream(popular, conform_table(table))


def mean_reciprocal_rank(
    suggest: object, held_out: pa.Table, prefix_lengths: tuple[int, ...] = (1, 2, 3, 4, 5), n: int = 10
) -> float:
    """MRR of each held-out query among ``suggest(prefix, user_id, n)``'s texts, for its first
    characters at each of ``prefix_lengths`` (0 when it is not suggested), averaged."""
    from recstack.autocomplete.normalize import normalize

    total, count = 0.0, 0
    texts_in, users_in = held_out.column("query").to_pylist(), held_out.column("user_id").to_pylist()
    for text, user in zip(texts_in, users_in, strict=True):
        query = normalize(text)
        for length in prefix_lengths:
            if length > len(query):
                continue
            texts = [s.text for s in suggest(query[:length], user, n)]  # type: ignore[operator]
            total += 1.0 / (texts.index(query) + 1) if query in texts else 0.0
            count += 1
    return total / count if count else 0.0
