from __future__ import annotations

from collections import OrderedDict

import numpy as np

from recstack.serving.state import Exclusions


def test_exclusions_are_a_view_of_seen_and_hidden_items() -> None:
    seen: OrderedDict[int, None] = OrderedDict.fromkeys([3, 1, 4])
    blocked = {4, 9}  # 4 is also seen; 9 fell out of the bounded seen list
    view = Exclusions(seen, blocked)
    assert len(view) == 4 and sorted(view) == [1, 3, 4, 9] and 9 in view and 2 not in view
    assert view.mask(np.array([1, 2, 9, 5])).tolist() == [True, False, True, False]
    seen[7] = None  # a view, not a copy: later changes show
    assert 7 in view and len(view) == 5


def test_exclusion_masks_agree_on_both_paths() -> None:
    rng = np.random.default_rng(0)
    for n_seen in (0, 3, 50, 2_000):
        seen: OrderedDict[int, None] = OrderedDict.fromkeys(rng.integers(0, 5_000, n_seen).tolist())
        blocked = set(rng.integers(0, 5_000, 5).tolist())
        items = rng.integers(0, 5_000, 300)
        expected = [i in seen or i in blocked for i in items.tolist()]
        assert Exclusions(seen, blocked).mask(items).tolist() == expected  # sorted copy when few
        assert Exclusions(seen, blocked).mask(items[:3]).tolist() == expected[:3]  # lookups when many
