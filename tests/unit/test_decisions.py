"""Pure decision logic: time split, drift verdicts, backtest cohorts (the promotion gate: test_gate.py)."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pipelines.backtest import cohort_metrics
from pipelines.drift import column_results
from pipelines.spec import TrainingSpec
from pipelines.train import time_split


def test_time_split_never_trains_on_the_future() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pd.DataFrame({"t": [start + timedelta(minutes=i) for i in range(1000)]}).sample(frac=1, random_state=0)
    train, valid, holdout = time_split(frame, "t", TrainingSpec(validation_fraction=0.2, holdout_fraction=0.1))
    assert train["t"].max() < valid["t"].min() and valid["t"].max() < holdout["t"].min()
    assert len(train) + len(valid) + len(holdout) == 1000
    assert 80 <= len(holdout) <= 120 and 180 <= len(valid) <= 220


def test_drift_verdicts_follow_the_test_kind() -> None:
    snapshot = {
        "metrics": [
            {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1, "share": 0.5}},
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "a",
                    "method": "K-S p_value",
                    "threshold": 0.05,
                },
                "value": 0.01,
            },
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "b",
                    "method": "K-S p_value",
                    "threshold": 0.05,
                },
                "value": 0.5,
            },
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "c",
                    "method": "Wasserstein distance (normed)",
                    "threshold": 0.1,
                },
                "value": 0.3,
            },
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "d",
                    "method": "Jensen-Shannon distance",
                    "threshold": 0.1,
                },
                "value": 0.02,
            },
        ]
    }
    assert {c.column: c.drifted for c in column_results(snapshot)} == {"a": True, "b": False, "c": True, "d": False}


def test_cohort_metrics_per_day_and_version() -> None:
    rng = np.random.default_rng(0)
    day = pd.Timestamp("2026-01-03", tz="UTC")
    labels = rng.integers(0, 2, 400)
    frame = pd.DataFrame(
        {
            "as_of": [day + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 48, 400)],
            "model_version": rng.choice(["1", "2"], 400),
            "score": np.clip(labels * 0.6 + rng.random(400) * 0.4, 0, 1),
            "label": labels,
            "plan": rng.choice(["basic", "pro", None], 400),
        }
    )
    rows = cohort_metrics(frame, ["plan"], "logged")
    whole = [r for r in rows if r["slice_column"] == "ALL"]
    assert {(r["cohort"], r["model_version"]) for r in whole} == {
        ("2026-01-03", "1"),
        ("2026-01-03", "2"),
        ("2026-01-04", "1"),
        ("2026-01-04", "2"),
    }
    assert sum(r["n"] for r in whole) == 400 and {r["scored_by"] for r in rows} == {"logged"}
    assert all(r["auc"] > 0.9 for r in whole)
    by_plan = [r for r in rows if r["slice_column"] == "plan"]
    assert {r["slice_value"] for r in by_plan} == {"basic", "pro"}  # a missing value is in no slice
    assert sum(r["n"] for r in by_plan) == int(frame["plan"].notna().sum())
