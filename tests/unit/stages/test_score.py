"""The row fingerprint that ties each logged prediction to its exact inputs."""

import hashlib

import numpy as np
import pandas as pd

from pipelines.stages.score import row_sha256


def reference_sha256(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The definition, row by row: values as strings, missing as NUL, joined by the unit separator."""
    rows = []
    for _, row in frame[columns].astype("string").iterrows():
        text = "\x1f".join("\x00" if pd.isna(value) else str(value) for value in row)
        rows.append(hashlib.sha256(text.encode()).hexdigest())
    return rows


def test_fingerprints_follow_the_definition_with_missing_values() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "charges": rng.normal(size=500),
            "plan": pd.Series(rng.choice(["basic", "premium", None], 500), dtype="string"),
            "calls": rng.integers(0, 5, 500).astype("float64"),
        }
    )
    frame.loc[::7, "charges"] = np.nan
    assert row_sha256(frame, ["charges", "plan", "calls"]) == reference_sha256(frame, ["charges", "plan", "calls"])
    # The column order is part of the fingerprint.
    assert row_sha256(frame, ["plan", "charges", "calls"]) != row_sha256(frame, ["charges", "plan", "calls"])


def test_an_empty_hour_has_no_fingerprints() -> None:
    empty = pd.DataFrame({"charges": pd.Series([], dtype="float64"), "plan": pd.Series([], dtype="string")})
    assert row_sha256(empty, ["charges", "plan"]) == []


def test_fingerprints_of_edge_values_follow_the_definition() -> None:
    """Signed zeros, infinities, huge and tiny floats, ints, empty and non-ASCII text, categoricals."""
    frame = pd.DataFrame(
        {
            "x": [1.0, np.nan, 1e-5, 1e16, -0.0, 0.0, 123456789.123, np.inf, -np.inf, 0.1 + 0.2],
            "n": pd.Series(range(10), dtype="int64"),
            "s": pd.Series(["a", None, "b", "a", pd.NA, "c", "é", "", "a\x1fb", "0.0"], dtype="string"),
            "c": pd.Categorical(["u", "v", None, "u", "v", "u", "u", "v", None, "u"]),
        }
    )
    columns = ["x", "n", "s", "c"]
    assert row_sha256(frame, columns) == reference_sha256(frame, columns)
    # 0.0 and -0.0 are equal as numbers but not as inputs: their fingerprints differ.
    assert row_sha256(frame, ["x"])[4] != row_sha256(frame, ["x"])[5]
