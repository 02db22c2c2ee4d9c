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


@pytest.mark.parametrize(("task", "classes"), [("binary", None), ("regression", None), ("multiclass", ["a", "b", "c"])])
def test_the_scaffolded_spec_is_valid_for_each_task(task: str, classes: list[str] | None) -> None:
    import yaml

    from pipelines.scaffold import Inferred, spec_text
    from pipelines.spec import TASK_GATE_METRICS, TASK_OBJECTIVES, ModelSpec

    args = {
        "entity_key": "id", "timestamp": "at", "label": "y", "arrived_at": "arrived_at",
        "events": {"kind": "files", "path": "e/{start:%Y-%m-%d}.csv"},
        "labels": {"kind": "files", "path": "l/{start:%Y-%m-%d}.csv", "when_missing": "empty"},
        "partition": "day", "task": task, "classes": classes,
        "sample_start": "2026-01-01T00:00:00+00:00", "sample_end": "2026-01-08T00:00:00+00:00",
    }  # fmt: skip
    text = spec_text("shop", args, Inferred(["price"], ["plan"], {}, []), 100)
    spec = ModelSpec.model_validate(yaml.safe_load(text))
    assert (spec.task, spec.label.classes, spec.objective) == (task, classes, TASK_OBJECTIVES[task][0])
    assert spec.gate.metric == TASK_GATE_METRICS[task][0]
