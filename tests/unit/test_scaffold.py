"""What `pipelines new-model` infers from a sample, and how it reads the source arguments."""

import pandas as pd
import pytest

from pipelines.errors import ConfigError
from pipelines.scaffold import infer, parse_source


def test_features_and_suite_are_inferred_from_the_sample() -> None:
    sample = pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(100)],
            "at": pd.date_range("2026-01-01", periods=100, freq="h", tz="UTC").astype(str),
            "price": [str(10 + i) for i in range(100)],  # numbers as CSV text
            "plan": ["a", "b"] * 50,
            "note": [f"free text {i}" for i in range(100)],  # too many values to be a category
            "empty": [None] * 100,
            "churned": [0, 1] * 50,
        }
    )
    sample.loc[:9, "plan"] = None
    inferred = infer(sample, "id", "at", {"churned"})
    assert (inferred.numeric, inferred.categorical) == (["price"], ["plan"])
    assert set(inferred.left_out) == {"note", "empty", "churned"}
    by_column = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in inferred.expectations}
    assert by_column[("expect_column_values_to_be_between", "price")] == {
        "column": "price", "min_value": -89.0, "max_value": 208.0
    }  # fmt: skip
    assert by_column[("expect_column_values_to_be_in_set", "plan")]["value_set"] == ["a", "b"]
    assert by_column[("expect_column_values_to_not_be_null", "plan")]["mostly"] == 0.8  # 10% null, widened
    assert by_column[("expect_table_row_count_to_be_between", None)] == {"min_value": 0}


def test_source_arguments() -> None:
    assert parse_source("sql://warehouse/sales.orders", None) == {
        "kind": "sql", "connection": "warehouse", "table": "sales.orders"
    }  # fmt: skip
    assert parse_source("labels/{start:%Y-%m-%d}.csv", None, sparse=True)["when_missing"] == "empty"
    assert parse_source("s3://b/e/{start:%H}.parquet", "aws")["connection"] == "aws"
    with pytest.raises(ConfigError, match="sql://CONNECTION/TABLE"):
        parse_source("sql://warehouse", None)
