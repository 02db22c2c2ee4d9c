"""A small SQLite flight warehouse for docs/your-own-data.md: a `flights` table and a `delays` label table.

    python docs/examples/flights_warehouse.py /tmp/walkhome/source/warehouse.db [--days 60]

60 days from 2026-01-01 UTC, 600 to 900 flights a day, six carriers, twelve origins. Each flight
carries the weather of its origin airport at its departure hour (one reading per airport and hour,
shared by every flight of that hour): temperature, wind speed, pressure (missing for 0-50% of the
readings, a share drawn per day) and wind gust (reported only when it is gusty, ~75% missing).
`delayed` (0/1) depends on the carrier, the departure hour, the distance, the wind and the cold;
it arrives in `delays` six hours after the scheduled departure. The same seed writes the same rows.

`--new-carrier-from 2026-02-27` adds a seventh carrier, F9, from that day on (about 6% of each day's
flights are its): the days before are written exactly as without it.
"""

from __future__ import annotations

import argparse
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

START = datetime(2026, 1, 1, tzinfo=UTC)
CARRIERS = ["AA", "DL", "UA", "WN", "B6", "AS"]
CARRIER_SHARE = [0.22, 0.22, 0.18, 0.2, 0.1, 0.08]
CARRIER_EFFECT = {"AA": 0.2, "DL": -0.35, "UA": 0.1, "WN": 0.3, "B6": 0.45, "AS": -0.5, "F9": 0.6}
NEW_CARRIER, NEW_CARRIER_SHARE = "F9", 0.06
ORIGINS = ["ATL", "ORD", "DFW", "DEN", "LAX", "JFK", "SFO", "SEA", "LAS", "MCO", "CLT", "PHX"]
ORIGIN_BASE_C = np.array([8, -4, 9, -1, 15, 1, 11, 6, 10, 17, 7, 14], dtype=float)  # January means
LABEL_DELAY = timedelta(hours=6)


def weather(rng: np.random.Generator, day_index: int) -> pd.DataFrame:
    """One reading per origin and hour of a day: a front per airport and day, a daily cycle, a slow warming."""
    hours = np.arange(24)
    front = rng.normal(0, 4, size=len(ORIGINS))  # today's weather system per airport
    windy = rng.gamma(2.0, 4.0, size=len(ORIGINS))
    rows = []
    for o, origin in enumerate(ORIGINS):
        cycle = -4 * np.cos((hours - 3) / 24 * 2 * np.pi)  # coldest near 03:00 local-ish, warmest mid-afternoon
        temperature = ORIGIN_BASE_C[o] + 0.08 * day_index + front[o] + cycle + rng.normal(0, 1, 24)
        wind = np.clip(windy[o] + rng.normal(0, 2.5, 24), 0, None)
        pressure = 1013 - 0.6 * front[o] - 0.3 * windy[o] + rng.normal(0, 3, 24)
        gust = np.where(wind > np.quantile(wind, 0.75), wind * 1.5 + rng.gamma(2, 2, 24), np.nan)
        rows.append(
            pd.DataFrame(
                {
                    "origin": origin,
                    "dep_hour": hours,
                    "temperature": np.round(temperature, 1),
                    "wind_speed": np.round(wind, 1),
                    "pressure": np.round(pressure, 1),
                    "wind_gust": np.round(gust, 1),
                }
            )
        )
    frame = pd.concat(rows, ignore_index=True)
    missing_share = rng.uniform(0.0, 0.5)  # how often today's pressure sensor feed was down
    frame.loc[rng.random(len(frame)) < missing_share, "pressure"] = np.nan
    return frame


def flights_day(seed: int, day_index: int, new_carrier_from: datetime | None = None) -> pd.DataFrame:
    day = START + timedelta(days=day_index)
    rng = np.random.default_rng([seed, day_index])
    n = int(rng.integers(600, 901))
    dep_hour = rng.choice(np.arange(5, 24), size=n, p=_hour_weights())
    minute = rng.integers(0, 60, size=n)
    order = np.lexsort((minute, dep_hour))
    dep_hour, minute = dep_hour[order], minute[order]
    carrier = rng.choice(CARRIERS, size=n, p=CARRIER_SHARE)
    origin = rng.choice(ORIGINS, size=n)
    distance = np.round(np.clip(rng.lognormal(6.6, 0.55, size=n), 150, 2800), 1)
    scheduled = [day + timedelta(hours=int(h), minutes=int(m)) for h, m in zip(dep_hour, minute, strict=True)]
    flights = pd.DataFrame(
        {
            "flight_id": [f"F{day:%Y%m%d}-{i:04d}" for i in range(n)],
            "scheduled_at": scheduled,
            "Year": day.year,
            "Month": day.month,
            "DayofMonth": day.day,
            "DayOfWeek": day.isoweekday(),
            "FlightNum": rng.integers(1, 5000, size=n),
            "carrier": carrier,
            "origin": origin,
            "distance": distance,
            "dep_hour": dep_hour,
        }
    ).merge(weather(rng, day_index), on=["origin", "dep_hour"], how="left")
    if new_carrier_from is not None and day >= new_carrier_from:  # its own stream: the other columns stay as they were
        joins = np.random.default_rng([seed, day_index, 1]).random(n) < NEW_CARRIER_SHARE
        flights.loc[joins, "carrier"] = NEW_CARRIER
    logit = (
        -1.6
        + flights["carrier"].map(CARRIER_EFFECT)
        + 0.09 * (flights["dep_hour"] - 12)
        + 0.0004 * (flights["distance"] - 900)
        + 0.09 * (flights["wind_speed"] - 8)
        - 0.05 * (flights["temperature"] - 8)
    )
    flights["delayed"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return flights


def _hour_weights() -> np.ndarray:
    weights = np.array([3, 6, 8, 8, 7, 6, 6, 6, 7, 7, 7, 8, 8, 7, 6, 5, 4, 3, 2], dtype=float)
    return weights / weights.sum()


def write_warehouse(
    path: Path, days: int = 60, seed: int = 2026, new_carrier_from: datetime | None = None
) -> tuple[int, int]:
    frame = pd.concat([flights_day(seed, i, new_carrier_from) for i in range(days)], ignore_index=True)
    delays = frame[["flight_id", "scheduled_at", "delayed"]].assign(arrived_at=frame["scheduled_at"] + LABEL_DELAY)
    flights = frame.drop(columns=["delayed"])
    for table in (flights, delays):
        for column in ("scheduled_at", "arrived_at"):
            if column in table:
                table[column] = table[column].map(lambda t: t.isoformat())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as connection:
        flights.to_sql("flights", connection, index=False)
        delays.to_sql("delays", connection, index=False)
        connection.execute("CREATE INDEX flights_scheduled_at ON flights (scheduled_at)")
        connection.execute("CREATE INDEX delays_arrived_at ON delays (arrived_at)")
    tmp.replace(path)
    return len(flights), int(delays["delayed"].sum())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--new-carrier-from", type=datetime.fromisoformat, help="a day, e.g. 2026-02-27: F9 flies from then"
    )
    args = parser.parse_args()
    since = None if args.new_carrier_from is None else args.new_carrier_from.replace(tzinfo=UTC)
    rows, positives = write_warehouse(args.path, args.days, args.seed, since)
    print(
        f"{args.path}: {rows} flights over {args.days} days from {START:%Y-%m-%d}, {positives} delayed ({positives / rows:.1%})"
    )
