"""Deterministic demo source: hourly customer-activity events and churn labels that arrive later.

Each hour's file depends only on (seed, hour), so any range can be regenerated identically.
Two knobs: `drift_from` shifts some feature distributions from that hour on, and `bad_hours`
corrupts those hours in ways the validation suite must catch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.intervals import hours_between

# The demo_orders model reads its SQL warehouse (a SQLite file `pipelines demo` writes) through this
# Airflow connection; define your own in the UI, a secrets backend or AIRFLOW_CONN_*.
DEMO_WAREHOUSE_CONN_ID = "pipelines_demo_warehouse"


def demo_connections(source_root: Path) -> dict[str, str]:
    """The demo's connections as AIRFLOW_CONN_* variables for the embedded Airflow."""
    warehouse = {"conn_type": "sqlite", "host": str(source_root / "demo_orders" / "warehouse.db")}
    return {f"AIRFLOW_CONN_{DEMO_WAREHOUSE_CONN_ID.upper()}": json.dumps(warehouse)}


def source_hour_file(root: Path, hour: datetime) -> Path:
    """The demo feed delivers one CSV per hour: <root>/dt=YYYY-MM-DD/hour=HH.csv (its spec's path template)."""
    return root / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}.csv"


PLANS = ["basic", "standard", "premium"]
REGIONS = ["north", "south", "east", "west"]
PAYMENT_METHODS = ["card", "bank_transfer", "invoice", "wallet"]
# Columns the drift knob moves; the others keep their distribution.
DRIFTED_COLUMNS = ("monthly_charges", "support_calls", "plan")


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 7
    rows_per_hour: int = 1000
    population: int = 50_000
    label_delay_hours: int = 6
    drift_from: datetime | None = None
    bad_hours: frozenset[datetime] = field(default_factory=frozenset)


def _hour_rng(seed: int, hour: datetime) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}|{hour.isoformat()}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def churn_probability(df: pd.DataFrame, season: float = 0.0) -> pd.Series:
    """The demo's true churn probability of each event (season: the hour's daily cycle, -1 to 1)."""
    logit = (
        -1.6
        - 0.045 * df["tenure_months"]
        + 0.025 * (df["monthly_charges"] - 65)
        + 0.45 * df["support_calls"]
        + 0.08 * df["days_since_last_login"].fillna(20)
        - 0.004 * df["usage_minutes"]
        + df["plan"].map({"basic": 0.5, "standard": 0.0, "premium": -0.6})
        + df["payment_method"].map({"invoice": 0.7, "wallet": 0.3}).fillna(0.0)
        + 0.3 * season
    )
    return 1 / (1 + np.exp(-logit))


def generate_hour(config: DemoConfig, hour: datetime) -> pd.DataFrame:
    """Events of one hour, with the true label (the source splits it off into the label feed)."""
    rng = _hour_rng(config.seed, hour)
    # Daily seasonality: more traffic and more usage in the evening.
    season = np.sin(2 * np.pi * (hour.hour - 6) / 24)
    n = max(10, int(config.rows_per_hour * (1 + 0.3 * season)))
    drifted = config.drift_from is not None and hour >= config.drift_from

    customers = rng.choice(config.population, size=n, replace=False)
    offsets = np.sort(rng.choice(3600, size=n, replace=False))
    plan_p = [0.2, 0.3, 0.5] if drifted else [0.5, 0.35, 0.15]
    df = pd.DataFrame(
        {
            "customer_id": [f"C{c:06d}" for c in customers],
            "event_time": [hour + timedelta(seconds=int(s)) for s in offsets],
            "tenure_months": rng.integers(0, 73, size=n),
            "monthly_charges": np.round(rng.normal(95 if drifted else 65, 20, size=n).clip(15, 200), 2),
            "support_calls": rng.poisson(3.5 if drifted else 1.2, size=n),
            "days_since_last_login": np.round(rng.exponential(6, size=n), 1),
            # No hour-of-day pattern here: an hourly window would then differ from the whole-day
            # drift reference and be flagged as drift every night.
            "usage_minutes": np.round(rng.gamma(2.0, 72, size=n), 1),
            "plan": rng.choice(PLANS, size=n, p=plan_p),
            "region": rng.choice(REGIONS, size=n),
            "payment_method": rng.choice(PAYMENT_METHODS, size=n, p=[0.45, 0.25, 0.2, 0.1]),
        }
    )
    # Real sources have gaps: some logins and payment methods are unknown.
    df.loc[rng.random(n) < 0.05, "days_since_last_login"] = np.nan
    df["payment_method"] = df["payment_method"].astype(object)
    df.loc[rng.random(n) < 0.03, "payment_method"] = None

    df["churned"] = (rng.random(n) < churn_probability(df, season)).astype(int)

    if hour in config.bad_hours:
        bad = rng.choice(n, size=max(3, n // 20), replace=False)
        df.loc[bad[: len(bad) // 3], "customer_id"] = None
        df.loc[bad[len(bad) // 3 : 2 * len(bad) // 3], "monthly_charges"] = -999.0
        df.loc[bad[2 * len(bad) // 3 :], "plan"] = "platinum_legacy"
    return df


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """A source file written whole or not at all (a reader never sees half a file); times in ISO 8601."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S%z")
    tmp.replace(path)


def write_source(root: Path, config: DemoConfig, start: datetime, end: datetime) -> int:
    """Write event files for every hour in [start, end) and the label files those events produce.

    A label for an event in hour h arrives in hour h + delay, so each label file comes from
    exactly one event hour and regenerating any range rewrites identical files.
    """
    events_root, labels_root = root / "events", root / "labels"
    written = 0
    for hour in hours_between(start, end):
        df = generate_hour(config, hour)
        events = df.drop(columns=["churned"])
        labels = df.loc[df["customer_id"].notna(), ["customer_id", "event_time", "churned"]].copy()
        arrival = hour + timedelta(hours=config.label_delay_hours)
        labels["arrived_at"] = arrival
        write_csv(events, source_hour_file(events_root, hour))
        write_csv(labels, source_hour_file(labels_root, arrival))
        written += len(events)
    return written


# --- the second demo model: orders in a SQL warehouse, one partition per day -------------------

CHANNELS = ["web", "app", "store"]
CATEGORIES = ["apparel", "shoes", "electronics", "home", "beauty"]
CLOSED_DAYS = frozenset({(12, 25)})  # the shop is closed: a day without a single order


def generate_orders_day(seed: int, day: datetime) -> pd.DataFrame:
    """One day's orders with their true `returned` label (the warehouse splits it off). None on a closed day."""
    rng = _hour_rng(seed, day)
    n = 0 if (day.month, day.day) in CLOSED_DAYS else int(rng.integers(220, 320) * (1.3 if day.weekday() >= 5 else 1))
    seconds = np.sort(rng.choice(86_400, size=n, replace=False))
    channel = rng.choice(CHANNELS, size=n, p=[0.5, 0.35, 0.15])
    category = rng.choice(CATEGORIES, size=n, p=[0.35, 0.2, 0.15, 0.2, 0.1])
    items = rng.integers(1, 7, size=n)
    discount = np.round(rng.choice([0, 0, 0, 10, 20, 30, 50], size=n).astype(float), 0)
    orders = pd.DataFrame(
        {
            "order_id": [f"O{day:%Y%m%d}{i:05d}" for i in range(n)],
            "ordered_at": [day + timedelta(seconds=int(s)) for s in seconds],
            "basket_value": np.round(rng.gamma(2.0, 40, size=n) * items, 2),
            "items": items,
            "discount_pct": discount,
            "customer_tenure_days": rng.integers(0, 2000, size=n),
            "channel": channel,
            "category": category,
        }
    )
    logit = (
        -2.2
        + 0.9 * (orders["category"] == "apparel")
        + 0.6 * (orders["category"] == "shoes")
        + 0.25 * orders["items"]
        + 0.02 * orders["discount_pct"]
        - 0.0006 * orders["customer_tenure_days"]
        - 0.8 * (orders["channel"] == "store")
    )
    orders["returned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return orders


def write_orders_warehouse(path: Path, start: datetime, end: datetime, label_delay: timedelta, seed: int = 11) -> int:
    """A SQLite warehouse with an `orders` table and a `returns` table (labels, arriving `label_delay` later).
    Times are ISO 8601 text with an offset, as many exports hold them. Rewriting it gives the same rows."""
    import sqlite3

    days = pd.date_range(start, end, freq="D", inclusive="left").to_pydatetime()
    frame = pd.concat([d for d in (generate_orders_day(seed, day) for day in days) if len(d)], ignore_index=True)
    labels = frame[["order_id", "ordered_at", "returned"]].assign(arrived_at=frame["ordered_at"] + label_delay)
    orders = frame.drop(columns=["returned"])
    for table in (orders, labels):
        for column in ("ordered_at", "arrived_at"):
            if column in table:
                table[column] = table[column].map(lambda t: t.isoformat())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as connection:
        orders.to_sql("orders", connection, index=False)
        labels.to_sql("returns", connection, index=False)
    tmp.replace(path)
    return len(orders)


# --- the third demo model: daily sales per store, a regression -------------------------------------

STORE_TYPES = ["hyper", "super", "express"]
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAY_FACTOR = np.array([0.9, 0.9, 0.95, 1.0, 1.15, 1.35, 0.75])


def holiday_season(day: datetime) -> bool:
    """The run-up to Christmas, when every store sells more."""
    return (day.month == 11 and day.day >= 20) or (day.month == 12 and day.day <= 24)


def _stores(seed: int, count: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kind = rng.choice(STORE_TYPES, size=count, p=[0.2, 0.5, 0.3])
    size = {"hyper": 6000.0, "super": 2000.0, "express": 400.0}
    return pd.DataFrame(
        {
            "store_id": [f"S{i:04d}" for i in range(count)],
            "store_type": kind,
            "region": rng.choice(REGIONS, size=count),
            "store_size_sqm": np.round([size[k] * rng.uniform(0.7, 1.3) for k in kind], 0),
            "base_units": [size[k] / 10 * rng.uniform(0.6, 1.4) for k in kind],
        }
    )


def generate_sales_day(seed: int, day: datetime, stores: int = 200) -> pd.DataFrame:
    """One row per store for `day` (its features at opening) with the true `units_sold`."""
    rng = _hour_rng(seed, day)
    frame = _stores(seed, stores)
    promo = (rng.random(stores) < 0.25).astype(int)
    discount = np.where(promo == 1, rng.choice([10.0, 20.0, 30.0], size=stores), 0.0)
    season = holiday_season(day)
    weekday = day.weekday()
    frame["sales_date"] = day
    frame["day_of_week"] = WEEKDAYS[weekday]
    frame["promo"] = promo
    frame["discount_pct"] = discount
    frame["holiday_season"] = int(season)
    # What the store sold on average over the last four weeks, as the warehouse reports it each morning.
    frame["avg_units_28d"] = np.round(frame["base_units"] * (1.3 if season else 1.0) * rng.normal(1, 0.05, stores), 1)
    expected = (
        frame["base_units"] * WEEKDAY_FACTOR[weekday] * (1 + 0.35 * promo + 0.01 * discount) * (1.6 if season else 1.0)
    )
    frame["units_sold"] = np.round(np.maximum(0, expected * rng.normal(1, 0.08, stores)), 0)
    return frame.drop(columns=["base_units"])


def write_sales_source(root: Path, start: datetime, end: datetime, label_delay: timedelta, seed: int = 23) -> int:
    """One CSV of store-days per day under <root>/events, and the sales figures (labels) by arrival day
    under <root>/labels: each day's sales arrive `label_delay` later. Rewriting it gives the same files."""
    written = 0
    for day in pd.date_range(start, end, freq="D", inclusive="left").to_pydatetime():
        frame = generate_sales_day(seed, day)
        arrival = day + label_delay
        write_csv(frame.drop(columns=["units_sold"]), root / "events" / f"dt={day:%Y-%m-%d}.csv")
        labels = frame[["store_id", "sales_date", "units_sold"]].assign(arrived_at=arrival)
        write_csv(labels, root / "labels" / f"dt={arrival:%Y-%m-%d}.csv")
        written += len(frame)
    return written
