"""The prefix index against brute force: for every prefix, the top completions by score."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.autocomplete.index import CompletionIndex, LiveCompletions
from recstack.autocomplete.normalize import normalize, normalize_prefix


def brute(scores: dict[str, float], prefix: str, n: int) -> list[str]:
    found = sorted((q for q in scores if q.startswith(prefix)), key=lambda q: (-scores[q], q))
    return found[:n]


def test_normalization() -> None:
    assert normalize("  Star\tWARS\u00a0 ") == "star wars"
    assert normalize("ＳＴＡＲ") == "star"  # NFKC: full-width letters
    assert normalize("Stra\u00dfe") == "strasse"  # case folding, not lower()
    assert normalize("a\x00b\u200bc") == "abc"  # control and format characters dropped
    assert normalize("") == "" and normalize(None) == "" and normalize(" \n ") == ""
    assert (
        normalize("the a", stop_words={"the", "a"}) == "" and normalize("the matrix", {"the"}) == "the matrix"
    )
    assert normalize("x" * 500, max_chars=10) == "x" * 10
    assert normalize("мир 世界 🙂") == "мир 世界 🙂"  # mixed scripts and emoji stay
    assert normalize_prefix("Star ") == "star " and normalize_prefix("star") == "star"


@pytest.mark.parametrize("scan", [1, 4, 64])
def test_top_completions_equal_brute_force(scan: int) -> None:
    rng = np.random.default_rng(0)
    letters = list("abcde ")
    keys = {"".join(rng.choice(letters, rng.integers(1, 7))).strip() for _ in range(3_000)}
    keys.discard("")
    values = rng.permutation(len(keys)).astype(float)  # distinct scores: one right answer
    scores = dict(zip(sorted(keys), values, strict=True))
    index = CompletionIndex(scores, k=10, scan=scan)
    prefixes = {q[:i] for q in scores for i in range(len(q) + 1)} | {"zz", "a b c d e"}
    for prefix in prefixes:
        for n in (1, 3, 10):
            got = [q for q, _ in index.complete(prefix, n)]
            assert got == brute(scores, prefix, n), (prefix, n)
    assert len(index) == len(scores) and index.nbytes > 0


def test_an_empty_index_completes_nothing() -> None:
    assert CompletionIndex({}).complete("", 5) == [] and CompletionIndex({}).complete("a", 5) == []


def test_live_counts_are_suggested_at_once_and_survive_a_rebuild() -> None:
    live = LiveCompletions(half_life_s=3_600, k=5, scan=2)
    live.add([("star wars", 0.0)] * 3 + [("star trek", 0.0)] * 2 + [("stardust", 0.0)])
    assert [q for q, _ in live.complete("star", 5)] == ["star wars", "star trek", "stardust"]
    live.rebuild(now_s=7_200)  # two half-lives later: every score a quarter, the order kept
    assert [q for q, _ in live.complete("star", 5)] == ["star wars", "star trek", "stardust"]
    assert live.complete("star w", 1)[0][1] == pytest.approx(3 / 4)
    # a query trending now outweighs older counts: 4 fresh events beat 3 two half-lives old
    live.add([("stardust", 7_200.0)] * 4)
    top = live.complete("star", 3)
    assert top[0][0] == "stardust" and top[0][1] == pytest.approx(1 / 4 + 4)
    live.rebuild(now_s=7_200)
    after = live.complete("star", 3)
    assert [q for q, _ in after] == [q for q, _ in top]
    assert [v for _, v in after] == pytest.approx([v for _, v in top], rel=1e-6)  # float32 in the index
    assert not live.delta


def test_the_sorted_array_layout_answers_the_same() -> None:
    from recstack.autocomplete.index import SortedArrayIndex

    rng = np.random.default_rng(1)
    keys = {"".join(rng.choice(list("abcé 世"), rng.integers(1, 6))).strip() for _ in range(2_000)}
    keys.discard("")
    scores = dict(zip(sorted(keys), rng.permutation(len(keys)).astype(float), strict=True))
    layouts = (CompletionIndex(scores, k=10, scan=8), SortedArrayIndex(scores, k=10, scan=8))
    for prefix in {q[:i] for q in scores for i in range(len(q) + 1)} | {"zz"}:
        expected = brute(scores, prefix, 5)
        assert [[q for q, _ in index.complete(prefix, 5)] for index in layouts] == [expected, expected]
