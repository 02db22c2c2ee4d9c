"""What `pipelines new-model` infers from a sample, and how it reads the source arguments."""

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import ConfigError
from pipelines.dev.scaffold import infer, parse_source


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
    # Seen 10 to 109, widened by the span either way, but never below 0, as in the sample.
    assert by_column[("expect_column_values_to_be_between", "price")] == {
        "column": "price", "min_value": 0.0, "max_value": 208.0
    }  # fmt: skip
    assert by_column[("expect_column_values_to_be_in_set", "plan")]["value_set"] == ["a", "b"]
    # 10 of the first day's 24 rows are null, none later: the worst day, plus a quarter of the spread.
    assert by_column[("expect_column_values_to_not_be_null", "plan")]["mostly"] == 0.479
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

    from pipelines.core.spec import ModelSpec
    from pipelines.core.tasks import Task
    from pipelines.dev.scaffold import Inferred, spec_text

    args = {
        "entity_key": "id", "timestamp": "at", "label": "y", "arrived_at": "arrived_at",
        "events": {"kind": "files", "path": "e/{start:%Y-%m-%d}.csv"},
        "labels": {"kind": "files", "path": "l/{start:%Y-%m-%d}.csv", "when_missing": "empty"},
        "partition": "day", "task": task, "classes": classes,
        "sample_start": "2026-01-01T00:00:00+00:00", "sample_end": "2026-01-08T00:00:00+00:00",
    }  # fmt: skip
    text = spec_text("shop", args, Inferred(["price"], ["plan"], {}, []), 100)
    spec = ModelSpec.model_validate(yaml.safe_load(text))
    assert (spec.task, spec.label.classes, spec.objective) == (task, classes, Task(task).objectives[0])
    assert spec.gate.metric == Task(task).gate_metrics[0]
    assert (spec.drift.num_method, spec.drift.cat_method, spec.drift.calibrate) == (
        "wasserstein",
        "jensenshannon",
        True,
    )
    # An hourly model stores a reference big enough to calibrate on its hours (~40 rows each).
    hourly = ModelSpec.model_validate(yaml.safe_load(spec_text("shop", {**args, "partition": "hour"}, Inferred(
        ["price"], ["plan"], {}, [], window_days=28), 100)))  # fmt: skip
    assert hourly.drift.reference_rows == 40 * 24 * 28


def flights_sample(days: int = 7, per_day: int = 600) -> pd.DataFrame:
    """Flights joined to hourly weather, as a warehouse table holds them: calendar columns, a flight
    number, a pressure reading whose null share swings by day, and wind gusts and snow depth that an
    outer join leaves mostly empty."""
    rng = np.random.default_rng(3)
    frames = []
    for d in range(days):
        day = pd.Timestamp("2026-01-05", tz="UTC") + pd.Timedelta(days=d)
        stamps = day + pd.to_timedelta(rng.integers(0, 24 * 60, per_day), unit="min")
        pressure = rng.normal(1013, 5, per_day)
        pressure[rng.random(per_day) < [0.0, 0.6, 0.1, 0.0, 0.3, 0.05, 0.45][d % 7]] = np.nan
        gusts = rng.normal(30, 8, per_day)
        gusts[rng.random(per_day) < 0.76] = np.nan
        snow = rng.normal(5, 2, per_day)
        snow[rng.random(per_day) < 0.93] = np.nan
        frames.append(
            pd.DataFrame(
                {
                    "flight_id": [f"f{d}-{i}" for i in range(per_day)],
                    "scheduled_at": stamps,
                    "Year": stamps.year,
                    "Month": stamps.month,
                    "DayofMonth": stamps.day,
                    "DayOfWeek": stamps.dayofweek + 1,
                    "FlightNum": rng.integers(1, 3000, per_day),
                    "dep_hour": stamps.hour,
                    "distance": rng.lognormal(6.5, 0.6, per_day).round(),
                    "carrier": rng.choice(["AA", "DL", "UA", "WN"], per_day),
                    "pressure": pressure,
                    "wind_gust": gusts,
                    "snow_depth": snow,
                    "delayed": rng.integers(0, 2, per_day),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_time_and_identifiers_are_no_features_and_every_bound_holds_on_every_day() -> None:
    from pipelines.dev.scaffold import suite_failures_on_sample

    sample = flights_sample()
    inferred = infer(sample, "flight_id", "scheduled_at", {"delayed"}, "day", sample_days=7)
    assert (inferred.numeric, inferred.categorical) == (
        ["DayOfWeek", "dep_hour", "distance", "pressure", "wind_gust", "snow_depth"],
        ["carrier"],
    )
    assert set(inferred.left_out) == {"Year", "Month", "DayofMonth", "FlightNum", "delayed"}
    assert "does not repeat within a training window" in inferred.left_out["Month"]
    assert "identifier" in inferred.left_out["FlightNum"]
    assert list(inferred.drift_exclude) == ["DayOfWeek"]  # a weekday is a feature, but a day holds only one
    # 600 rows a day: five weeks hold 21,000 rows, the first whole number of weeks past 20,000.
    assert inferred.window_days == 35 and "600 rows a day" in inferred.window_reason

    checks = {(e["type"], e["kwargs"].get("column")): e for e in inferred.expectations}
    # Calendar parts that stay features get the calendar's range, not the week or the hours sampled.
    assert checks[("expect_column_values_to_be_between", "DayOfWeek")]["kwargs"] == {
        "column": "DayOfWeek", "min_value": 0, "max_value": 7
    }  # fmt: skip
    assert checks[("expect_column_values_to_be_between", "dep_hour")]["kwargs"]["max_value"] == 23
    pressure = checks[("expect_column_values_to_not_be_null", "pressure")]
    # Null on 0% to 60% of a day's rows: the pooled share (~21%) would fail the 60% day.
    assert pressure["kwargs"]["mostly"] < 0.4 and "null in 0.0% to" in pressure["meta"]["notes"]
    # 76% null: a check the sample supports; 93% null: none, and the suite says why.
    assert checks[("expect_column_values_to_not_be_null", "wind_gust")]["kwargs"]["mostly"] < 0.2
    assert ("expect_column_values_to_not_be_null", "snow_depth") not in checks
    assert "no null check" in inferred.unchecked["snow_depth"]
    assert all(e["meta"]["notes"] for e in inferred.expectations)  # each says where it came from

    suite = {"name": "flights", "expectations": inferred.expectations}
    assert suite_failures_on_sample(suite, sample, "scheduled_at", "day") == {}
    # The check can fail: the old pooled rule (mostly = 1 - 2 x the pooled null share) breaks the 60% day.
    pooled = 1 - 2 * float(sample["pressure"].isna().mean())
    strict = {**pressure, "kwargs": {"column": "pressure", "mostly": pooled}}
    broken = suite_failures_on_sample({"name": "flights", "expectations": [strict]}, sample, "scheduled_at", "day")
    assert list(broken) == ["2026-01-06T00:00:00+00:00"] and "pressure" in broken["2026-01-06T00:00:00+00:00"][0]
