"""Unit edit distance for stage-2 validation: Levenshtein distance between the decoder's greedy
units and the target units, summed over a validation set and divided by the total target length
(the unit analogue of a word error rate).

The dynamic programme runs one row at a time in numpy. Within a row, the insertion term
new[j] = min(t[j], new[j-1] + 1) is a running minimum: new[j] - j = min_{k<=j}(t[k] - k), so
`np.minimum.accumulate(t - j) + j` solves it without a Python loop over columns.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Insertions + deletions + substitutions turning `a` into `b`."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return int(max(len(a), len(b)))
    j = np.arange(len(b) + 1, dtype=np.int64)
    prev = j.copy()
    for i in range(1, len(a) + 1):
        t = np.empty_like(prev)
        t[0] = i
        t[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (b != a[i - 1]))
        prev = np.minimum.accumulate(t - j) + j
    return int(prev[-1])
