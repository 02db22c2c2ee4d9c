"""Backtest metrics per cohort, version and slice."""

import numpy as np
import pandas as pd

from pipelines.backtest import cohort_metrics


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
