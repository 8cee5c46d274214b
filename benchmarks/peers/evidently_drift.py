"""Evidently's own drift statistics, run in the peer environment (.bench/evidently) by
benchmarks/drift_evidently.py on the same two windows as recstack's.

    python evidently_drift.py INPUT.npz
INPUT holds, per feature NAME, ``ref:NAME`` and ``cur:NAME`` (float arrays) and ``kind:NAME``
("numeric" or "categorical"). Prints one JSON line: {NAME: {"psi": ..., "ks_p": ...}} from
Evidently's ``psi_stat_test`` and (numeric) ``ks_stat_test``.
"""

import json
import os
import sys

os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently's telemetry
os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests import ks_stat_test, psi_stat_test
from evidently.legacy.core import ColumnType


def main() -> None:
    data = np.load(sys.argv[1])
    names = sorted(k[4:] for k in data.files if k.startswith("ref:"))
    out = {}
    for name in names:
        ref, cur = pd.Series(data[f"ref:{name}"]), pd.Series(data[f"cur:{name}"])
        kind = ColumnType.Numerical if str(data[f"kind:{name}"]) == "numeric" else ColumnType.Categorical
        row = {"psi": float(psi_stat_test(ref, cur, kind, 0.1).drift_score)}
        if kind is ColumnType.Numerical:
            row["ks_p"] = float(ks_stat_test(ref, cur, kind, 0.05).drift_score)
        out[name] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
