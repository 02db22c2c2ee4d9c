"""Evidently drift report time (DataDriftPreset over the demo's 8 features and the score) by rows.

The monitor samples the scored interval down to `drift.max_current_rows` (seeded) before the
report, because the preset's time grows faster than linearly with rows. This prints the time
with and without that sample for 100k and 1M current rows against the reference sample, then
what calibrating the thresholds on the reference's own days or hours adds to each report
(a reference drawn from 28 days: the default 5,000 rows by day, and an hourly model's 26,880 by hour).

    python bench/drift_report.py [--rows 100000 1000000] [--sample 50000] [--reference 5000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pipelines.core.spec import DriftSpec
from pipelines.dev.demo_data import DemoConfig, generate_hour
from pipelines.stages.drift import (
    PREDICTION_COLUMN,
    _as_categorical_text,
    calibrate,
    column_tests,
    run_report,
    seeded_sample,
)

NUMERIC = ["tenure_months", "monthly_charges", "support_calls", "days_since_last_login", "usage_minutes"]
CATEGORICAL = ["plan", "region", "payment_method"]


def rows_of(config: DemoConfig, start: datetime, rows: int) -> pd.DataFrame:
    """Demo events hour after hour until `rows`, with a stand-in score column."""
    frames, total, hour = [], 0, start
    while total < rows:
        frame = generate_hour(config, hour)
        frames.append(frame)
        total += len(frame)
        hour += timedelta(hours=1)
    frame = pd.concat(frames, ignore_index=True).head(rows)
    frame[PREDICTION_COLUMN] = np.random.default_rng(0).random(len(frame))
    return frame


def report_seconds(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, int]:
    columns = [*NUMERIC, PREDICTION_COLUMN, *CATEGORICAL]
    began = time.perf_counter()
    results, _html = run_report(
        _as_categorical_text(reference[columns], CATEGORICAL),
        _as_categorical_text(current[columns], CATEGORICAL),
        [*NUMERIC, PREDICTION_COLUMN],
        CATEGORICAL,
        DriftSpec(drift_share=0.3),
    )
    return time.perf_counter() - began, sum(c.drifted for c in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sample", type=int, default=50_000, help="drift.max_current_rows (the demo spec's value)")
    parser.add_argument("--reference", type=int, default=5000, help="drift.reference_rows (the default)")
    args = parser.parse_args()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    reference = rows_of(DemoConfig(), start, args.reference)
    print(
        f"drift report: DataDriftPreset, 8 features + score, {len(reference):,} reference rows, {os.cpu_count()} CPU(s), "
        f"Python {platform.python_version()}"
    )
    report_seconds(reference, reference)  # warm-up: imports and first-call costs are not the report's
    for rows in args.rows:
        current = rows_of(DemoConfig(drift_from=start), start + timedelta(days=10), rows)
        sampled = seeded_sample(current, args.sample)
        sampled_s, sampled_drifted = report_seconds(reference, sampled)
        full_s, full_drifted = report_seconds(reference, current)
        print(
            f"{rows:>9,} current rows: sampled to {len(sampled):,}: {sampled_s:6.1f} s ({sampled_drifted} drifted)"
            f" | all rows: {full_s:6.1f} s ({full_drifted} drifted)"
        )
    # 28 days of demo hours, thinned to ~60 rows an hour: the pool the stored references are drawn from.
    hours = [start + timedelta(hours=h) for h in range(28 * 24)]
    pool = pd.concat([generate_hour(DemoConfig(), h).head(60) for h in hours], ignore_index=True)
    pool[PREDICTION_COLUMN] = np.random.default_rng(1).random(len(pool))
    numeric, tests = (
        [*NUMERIC, PREDICTION_COLUMN],
        column_tests(DriftSpec(), [*NUMERIC, PREDICTION_COLUMN], CATEGORICAL),
    )
    for unit, rows in (("day", 5000), ("hour", 26_880)):
        reference = pool.sample(n=rows, random_state=0)
        began = time.perf_counter()
        _, how = calibrate(reference, tests, numeric, "event_time", unit, set())
        calibrate_s = time.perf_counter() - began
        report_s, _ = report_seconds(reference, seeded_sample(pool.tail(700), 700))
        print(
            f"calibrating by {unit} on {rows:,} reference rows: {calibrate_s:5.2f} s ({how}) "
            f"| the report itself: {report_s:5.2f} s | ratio {calibrate_s / report_s:4.2f}"
        )


if __name__ == "__main__":
    main()
