from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from pipelines.core.intervals import hours_between
from pipelines.dev.demo_data import DRIFTED_COLUMNS, DemoConfig, generate_hour, source_hour_file, write_source

HOUR = datetime(2026, 1, 2, 13, tzinfo=UTC)


def test_each_hour_is_deterministic() -> None:
    pd.testing.assert_frame_equal(generate_hour(DemoConfig(), HOUR), generate_hour(DemoConfig(), HOUR))
    assert not generate_hour(DemoConfig(), HOUR).equals(generate_hour(DemoConfig(), HOUR + timedelta(hours=1)))


def test_realistic_shape() -> None:
    frame = generate_hour(DemoConfig(), HOUR)
    assert frame["days_since_last_login"].isna().any()
    assert frame["payment_method"].isna().any()
    assert not frame.duplicated(["customer_id", "event_time"]).any()
    assert 0.05 < frame["churned"].mean() < 0.5
    assert (frame["event_time"] >= HOUR).all() and (frame["event_time"] < HOUR + timedelta(hours=1)).all()


def test_daily_seasonality_in_volume() -> None:
    night, evening = HOUR.replace(hour=0), HOUR.replace(hour=12)
    assert len(generate_hour(DemoConfig(), evening)) > 1.3 * len(generate_hour(DemoConfig(), night))


def test_drift_knob_moves_only_its_columns() -> None:
    from scipy.stats import ks_2samp

    day = [HOUR.replace(hour=h) for h in range(24)]
    base = pd.concat([generate_hour(DemoConfig(), h) for h in day])
    drifted = pd.concat([generate_hour(DemoConfig(drift_from=day[0]), h) for h in day])
    assert drifted["monthly_charges"].mean() > base["monthly_charges"].mean() + 20
    assert drifted["support_calls"].mean() > 2 * base["support_calls"].mean()
    assert (drifted["plan"] == "premium").mean() > 2 * (base["plan"] == "premium").mean()
    for column in ("tenure_months", "days_since_last_login", "usage_minutes"):
        assert column not in DRIFTED_COLUMNS
        assert ks_2samp(base[column].dropna(), drifted[column].dropna()).pvalue > 0.01, column
    for column in ("region", "payment_method"):
        shares = base[column].value_counts(normalize=True) - drifted[column].value_counts(normalize=True)
        assert shares.abs().max() < 0.02, column


def test_bad_data_knob_corrupts_the_hour() -> None:
    frame = generate_hour(DemoConfig(bad_hours=frozenset({HOUR})), HOUR)
    assert frame["customer_id"].isna().any()
    assert (frame["monthly_charges"] < 0).any()
    assert (frame["plan"] == "platinum_legacy").any()


def test_labels_arrive_after_the_delay(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    written = write_source(tmp_path, DemoConfig(label_delay_hours=6), start, start + timedelta(hours=3))
    events = [source_hour_file(tmp_path / "events", h) for h in hours_between(start, start + timedelta(hours=3))]
    assert all(path.exists() for path in events)
    assert not source_hour_file(tmp_path / "labels", start).exists()
    label_file = source_hour_file(tmp_path / "labels", start + timedelta(hours=6))
    labels = pd.read_csv(label_file, parse_dates=["event_time", "arrived_at"])
    assert (labels["arrived_at"] - labels["event_time"] >= pd.Timedelta(hours=5)).all()
    assert written == sum(len(pd.read_csv(path)) for path in events)


def test_the_live_feed_extends_the_demo_sources_to_the_current_hour(tmp_path: Path) -> None:
    """What `pipelines up` runs every 30 s on a demo home: complete hours and days up to now, the same
    files the generator would write for them, nothing of the demo's January rewritten, idempotent."""
    from dataclasses import replace

    from pipelines.dev.demo import DRIFT_FROM, MODEL, ORDERS, SALES, feed_live
    from pipelines.storage.settings import get_settings

    settings = replace(get_settings(), source=tmp_path / "source")
    january = source_hour_file(settings.source / MODEL / "events", datetime(2026, 1, 3, 4, tzinfo=UTC))
    january.parent.mkdir(parents=True)
    january.write_text("the demo's own file")
    (settings.source / SALES).mkdir()
    (settings.source / ORDERS).mkdir()
    (settings.source / ORDERS / "warehouse.db").write_bytes(b"")
    now = datetime(2026, 12, 3, 11, 41, tzinfo=UTC)

    written = feed_live(settings, now)
    assert written == [
        f"{MODEL} hours 2026-12-01 11:00 .. 2026-12-03 10:00",
        f"{SALES} days 2026-11-26 .. 2026-12-02",
        f"{ORDERS} orders up to 2026-12-03",
    ]
    events = settings.source / MODEL / "events"
    fed = sorted(p.relative_to(events).as_posix() for p in events.rglob("*.csv"))
    assert len(fed) == 49 and fed[-1] == "dt=2026-12-03/hour=10.csv"  # not the hour still running
    expected = generate_hour(DemoConfig(drift_from=DRIFT_FROM), datetime(2026, 12, 3, 10, tzinfo=UTC))
    assert len(pd.read_csv(events / fed[-1])) == len(expected)
    assert january.read_text() == "the demo's own file"
    assert (settings.source / SALES / "events" / "dt=2026-12-02.csv").exists()
    assert not (settings.source / SALES / "events" / "dt=2026-12-03.csv").exists()
    import sqlite3

    with sqlite3.connect(settings.source / ORDERS / "warehouse.db") as db:
        (last,) = db.execute("select max(ordered_at) from orders").fetchone()
    assert "2026-12-02" <= last < "2026-12-03"

    assert feed_live(settings, now) == []  # nothing new until the next hour ends
    assert feed_live(settings, now + timedelta(minutes=20)) == [f"{MODEL} hours 2026-12-03 11:00 .. 2026-12-03 11:00"]
