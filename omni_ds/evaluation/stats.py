"""Summary statistics of report rows: means and percentiles that skip missing values."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


def present(values: Iterable) -> list[float]:
    return [float(v) for v in values if v is not None]


def distribution(values: Iterable) -> dict:
    """{"n", "mean", "p50", "p90"} of the values that are not None (nulls when there are none);
    percentiles interpolate linearly between order statistics (numpy's default)."""
    v = present(values)
    if not v:
        return {"n": 0, "mean": None, "p50": None, "p90": None}
    a = np.asarray(v)
    return {"n": len(v), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90))}


def ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None
