"""Per-row conversions done once per distinct value: a million rows of a column hold a few thousand
distinct values, and converting each row in Python costs seconds per million."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


def distinct_codes(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """(codes, distinct): each row's position among the distinct values, -1 for a missing row.
    Floats are told apart by bit pattern: compared by value, 0.0 and -0.0 would be one value."""
    is_missing = values.isna().to_numpy()
    if values.dtype.kind == "f":
        raw = values.to_numpy()
        codes, bits = pd.factorize(raw.view(f"i{raw.itemsize}"))
        distinct = pd.Series(bits.view(raw.dtype))
    else:
        codes, found = pd.factorize(values)
        distinct = pd.Series(found, dtype=values.dtype)
    return np.where(is_missing, -1, codes), distinct


def by_distinct(
    values: pd.Series, convert: Callable[[pd.Series], Any], missing: Any, dtype: Any = object
) -> np.ndarray:
    """`convert` applied to the distinct values of `values` (a Series of them, of the same dtype), spread
    back to every row; a missing row gets `missing`."""
    codes, distinct = distinct_codes(values)
    results = np.empty(len(distinct) + 1, dtype=dtype)  # the last entry, picked by code -1, is `missing`
    results[:-1] = convert(distinct)
    results[-1] = missing
    return np.asarray(results[codes])
