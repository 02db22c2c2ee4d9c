"""Drift judged by effect size against the reference's own day-to-day spread, through real Evidently.

The data imitate flights joined to hourly weather: each day ~900 flights, but only 24 weather
readings, each repeated across the flights of its hour, with a random weather-of-the-day effect.
The process is stationary: every day is drawn the same way. A per-row p-value test calls any two
days different; an uncalibrated distance flags the weather columns on most days. The calibrated
monitor must stay quiet on at least 90% of 30 such days and still flag a day whose features moved.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.core.spec import DriftSpec
from pipelines.stages.drift import ColumnTest, calibrate, column_tests, run_report

NUMERIC = ["distance", "dep_minute", "temperature", "wind_speed", "pressure"]
CATEGORICAL = ["carrier"]
WEATHER = ["temperature", "wind_speed", "pressure"]
START = datetime(2026, 3, 2, tzinfo=UTC)


def day_of_flights(rng: np.random.Generator, day: datetime, shift: float = 0.0) -> pd.DataFrame:
    rows = int(rng.integers(850, 950))
    hour = rng.integers(5, 23, rows)
    weather = pd.DataFrame(
        {
            "temperature": 12 + 4 * rng.normal() + 3 * np.sin(np.arange(24) / 24 * 2 * np.pi) + rng.normal(0, 1, 24),
            "wind_speed": np.abs(8 + 3 * rng.normal() + rng.normal(0, 2, 24)),
            "pressure": 1013 + 6 * rng.normal() + rng.normal(0, 0.5, 24),
        }
    )
    frame = weather.iloc[hour].reset_index(drop=True)
    frame["distance"] = rng.lognormal(6.5, 0.6, rows) * (1 + shift)
    frame["dep_minute"] = hour * 60 + rng.integers(0, 60, rows) + 240 * shift
    carriers = ["AA", "DL", "UA", "WN", "B6", "AS"]
    weights = np.array([0.2, 0.2, 0.2, 0.25, 0.1, 0.05]) if not shift else np.array([0.05, 0.05, 0.1, 0.2, 0.3, 0.3])
    frame["carrier"] = rng.choice(carriers, rows, p=weights)
    frame["flight_time"] = pd.Timestamp(day) + pd.to_timedelta(hour * 60 + rng.integers(0, 60, rows), unit="min")
    return frame


def month(rng: np.random.Generator, days: int, first: datetime) -> list[pd.DataFrame]:
    return [day_of_flights(rng, first + timedelta(days=d)) for d in range(days)]


def thresholds(reference: pd.DataFrame, spec: DriftSpec, calibrated: bool) -> dict[str, ColumnTest]:
    tests = column_tests(spec, NUMERIC, CATEGORICAL)
    if calibrated:
        tests, how = calibrate(reference, tests, NUMERIC, "flight_time", "day", set())
        assert how == "thresholds calibrated on 28 days of the reference"
    return tests


def window_drifted(reference: pd.DataFrame, day: pd.DataFrame, spec: DriftSpec, tests: dict[str, ColumnTest]) -> bool:
    columns = [*NUMERIC, *CATEGORICAL]
    results, _ = run_report(reference[columns], day[columns], NUMERIC, CATEGORICAL, spec, tests, html=False)
    return sum(r.drifted for r in results) / len(results) >= spec.drift_share


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    rng = np.random.default_rng(7)
    training = pd.concat(month(rng, 28, START), ignore_index=True)
    reference = training.sample(n=5000, random_state=0)  # what training stores, as it stores it
    return reference, month(rng, 30, START + timedelta(days=28))


def test_a_stationary_month_raises_at_most_three_false_alarms_in_thirty_days(
    world: tuple[pd.DataFrame, list[pd.DataFrame]],
) -> None:
    reference, days = world
    spec = DriftSpec()
    calibrated = thresholds(reference, spec, calibrated=True)
    alarms = [window_drifted(reference, day, spec, calibrated) for day in days]
    assert sum(alarms) <= 3, f"{sum(alarms)} of 30 stationary days flagged as drifted"
    # Without calibration the same effect sizes flag the weather on most days: the data are a fair trial.
    stated = thresholds(reference, spec, calibrated=False)
    uncalibrated = [window_drifted(reference, day, spec, stated) for day in days[:3]]
    assert all(uncalibrated), f"only {sum(uncalibrated)} of 3 days drifted uncalibrated: the trial is too easy"


def test_a_day_whose_flights_moved_is_still_caught(world: tuple[pd.DataFrame, list[pd.DataFrame]]) -> None:
    reference, _ = world
    moved = day_of_flights(np.random.default_rng(99), START + timedelta(days=60), shift=0.5)
    assert window_drifted(reference, moved, DriftSpec(), thresholds(reference, DriftSpec(), calibrated=True))


def test_a_reference_that_straddles_a_shift_does_not_hide_it() -> None:
    """Trained across a change (two weeks before it, two after), the reference's own days spread as
    wide as the shift: calibrating on that spread would call every later day normal. Its two halves
    differ, so those columns keep their stated thresholds, and a day after the change is caught."""
    rng = np.random.default_rng(11)
    days = [day_of_flights(rng, START + timedelta(days=d), shift=0.5 if d >= 14 else 0.0) for d in range(28)]
    reference = pd.concat(days, ignore_index=True).sample(n=5000, random_state=0)
    tests, how = calibrate(
        reference, column_tests(DriftSpec(), NUMERIC, CATEGORICAL), NUMERIC, "flight_time", "day", set()
    )
    assert how.endswith(
        "stated for distance, dep_minute, carrier: the reference's two halves differ (a change inside it)"
    )
    assert tests["distance"].threshold == 0.1 and tests["temperature"].threshold > 1.0  # the weather still calibrated
    after = day_of_flights(np.random.default_rng(5), START + timedelta(days=30), shift=0.5)
    columns = [*NUMERIC, *CATEGORICAL]
    results, _ = run_report(reference[columns], after[columns], NUMERIC, CATEGORICAL, DriftSpec(), tests, html=False)
    assert {r.column for r in results if r.drifted} >= {"distance", "dep_minute", "carrier"}
