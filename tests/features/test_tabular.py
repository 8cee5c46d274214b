from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.errors import CheckpointError, RecstackError
from recstack.features.tabular import MissingFeatureError, TabularEncoder


def test_unseen_missing_and_nonfinite_values_get_documented_defaults(tmp_path: Path) -> None:
    train = pd.DataFrame({"app": ["a", "b", "a"], "price": [1.0, 2.0, 3.0]})
    encoder = TabularEncoder(["app"], ["price"]).fit(train)
    new = pd.DataFrame({"app": ["b", "zzz", None], "price": [2.0, np.nan, np.inf]})
    assert encoder.transform(pd.DataFrame({"app": ["a"], "price": [1e308]})).dense[0, 0] == 10.0  # clipped
    out = encoder.transform(new)
    assert out.sparse[:, 0].tolist() == [2, 0, 0]  # a -> 1, b -> 2, unseen and missing -> 0
    std = np.std([1.0, 2.0, 3.0])
    assert out.dense[:, 0] == pytest.approx([0.0, 0.0, 0.0])  # 2.0 is the mean; bad values -> mean
    assert encoder.transform(pd.DataFrame({"app": ["a"], "price": [3.0]})).dense[0, 0] == pytest.approx(
        1 / std
    )
    encoder.transform(new)
    assert encoder.last_report.unseen == {"app": 2}
    assert encoder.last_report.nonfinite == {"price": 2}
    encoder.save(tmp_path / "enc.json")
    again = TabularEncoder.load(tmp_path / "enc.json").transform(new)
    assert np.array_equal(again.sparse, out.sparse) and np.array_equal(again.dense, out.dense)
    assert encoder.vocab_sizes == [3]


def test_missing_column_empty_frame_and_corrupt_file(tmp_path: Path) -> None:
    encoder = TabularEncoder(["app"], ["price"])
    with pytest.raises(RecstackError, match="empty"):
        encoder.fit(pd.DataFrame({"app": [], "price": []}))
    encoder.fit(pd.DataFrame({"app": ["a"], "price": [1.0]}))
    with pytest.raises(MissingFeatureError, match="price"):
        encoder.transform(pd.DataFrame({"app": ["a"]}))
    (tmp_path / "enc.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        TabularEncoder.load(tmp_path / "enc.json")
