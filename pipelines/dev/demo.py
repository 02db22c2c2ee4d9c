"""`pipelines demo`: three models through their lives inside Airflow, on the embedded defaults.

demo_churn (hourly CSV files): generates the demo source, then runs the real DAGs with
`dag.test()` in order: nightly training, six hourly scoring runs each followed by its drift
monitor (drift switched on halfway, so the policy requests a retraining), a second training that
meets the gate, and the daily backtest once the labels have arrived.
demo_orders (daily, SQL tables): writes a SQLite warehouse, then trains, scores three days (one
without orders) with their monitors, and backtests once the labels have arrived.
demo_sales (a daily regression, CSV files): trains in the holiday season, scores three days with
their monitors (the last one also judges the model's quality on labelled days), trains again and
lets the gate decide, then backtests.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta

from pipelines.airflow.connections import cli_settings
from pipelines.airflow.embedded import apply_airflow_environment, migrate_airflow_db
from pipelines.dev.demo_data import demo_connections
from pipelines.storage.database import upgrade_schema
from pipelines.storage.settings import Settings, get_settings

log = logging.getLogger(__name__)

MODEL = "demo_churn"
DEMO_START = datetime(2026, 1, 1, tzinfo=UTC)
DEMO_END = DEMO_START + timedelta(days=4)
DRIFT_FROM = datetime(2026, 1, 3, 5, tzinfo=UTC)


def write_demo_source(settings: Settings) -> int:
    from pipelines.core.spec import load_spec
    from pipelines.dev.demo_data import DemoConfig, write_source

    spec = load_spec(settings.specs_dir / f"{MODEL}.yaml")
    config = DemoConfig(label_delay_hours=spec.label.delay_hours, drift_from=DRIFT_FROM)
    return write_source(settings.source / MODEL, config, DEMO_START, DEMO_END)


ORDERS = "demo_orders"
ORDERS_START = datetime(2025, 12, 1, tzinfo=UTC)
ORDERS_END = datetime(2026, 1, 5, tzinfo=UTC)
ORDERS_FIRST_NIGHT = datetime(2025, 12, 26, 2, tzinfo=UTC)


def write_orders_source(settings: Settings) -> int:
    from pipelines.core.spec import load_spec
    from pipelines.dev.demo_data import write_orders_warehouse

    spec = load_spec(settings.specs_dir / f"{ORDERS}.yaml")
    warehouse = settings.source / ORDERS / "warehouse.db"
    return write_orders_warehouse(warehouse, ORDERS_START, ORDERS_END, timedelta(hours=spec.label.delay_hours))


def run_orders_demo() -> None:
    """The daily SQL model: train, score three days (25 December has no orders), monitor, backtest."""
    run_dag(f"{ORDERS}__train", ORDERS_FIRST_NIGHT)
    for day in range(3):
        start = datetime(2025, 12, 25, tzinfo=UTC) + timedelta(days=day)
        end = start + timedelta(days=1)
        run_dag(f"{ORDERS}__score", end, when=f"{start:%Y-%m-%d}")
        interval = {"interval_start": start.isoformat(), "interval_end": end.isoformat()}
        run_dag(f"{ORDERS}__monitor", end, interval, when=f"{start:%Y-%m-%d} drift")
    for night in (datetime(2025, 12, 29, 4, tzinfo=UTC) + timedelta(days=d) for d in range(3)):
        run_dag(f"{ORDERS}__backtest", night)


SALES = "demo_sales"
SALES_START = datetime(2025, 10, 1, tzinfo=UTC)
SALES_END = datetime(2026, 1, 5, tzinfo=UTC)
SALES_FIRST_NIGHT = datetime(2025, 12, 15, 2, tzinfo=UTC)


def write_sales_source(settings: Settings) -> int:
    from pipelines.core.spec import load_spec
    from pipelines.dev.demo_data import write_sales_source as write_files

    spec = load_spec(settings.specs_dir / f"{SALES}.yaml")
    return write_files(settings.source / SALES, SALES_START, SALES_END, timedelta(hours=spec.label.delay_hours))


def run_sales_demo() -> None:
    """The daily regression: train, score and monitor three days, train again (the gate), backtest."""
    run_dag(f"{SALES}__train", SALES_FIRST_NIGHT)
    for day in range(3):
        start = datetime(2025, 12, 15, tzinfo=UTC) + timedelta(days=day)
        end = start + timedelta(days=1)
        run_dag(f"{SALES}__score", end, when=f"{start:%Y-%m-%d}")
        interval = {"interval_start": start.isoformat(), "interval_end": end.isoformat()}
        run_dag(f"{SALES}__monitor", end, interval, when=f"{start:%Y-%m-%d} monitor")
    run_dag(f"{SALES}__train", SALES_FIRST_NIGHT + timedelta(days=3))
    for night in (datetime(2025, 12, 18, 7, tzinfo=UTC), datetime(2025, 12, 19, 7, tzinfo=UTC)):
        run_dag(f"{SALES}__backtest", night)  # each ingests the sales figures that arrived that morning


def run_dag(dag_id: str, logical_date: datetime, conf: dict[str, str] | None = None, when: str = "") -> None:
    from pipelines.airflow.dags import run_in_process

    started = time.perf_counter()
    # dag.test() has no scheduler to follow Asset events: an asset-scheduled DAG gets its interval as conf.
    run = run_in_process(
        dag_id, None if conf else logical_date, run_conf=conf, run_after=logical_date if conf else None
    )
    print(
        f"  {dag_id:<24} {when or f'{logical_date:%Y-%m-%d %H:%M}'}  {run.state}  ({time.perf_counter() - started:.1f}s)",
        flush=True,
    )
    if run.state != "success":
        raise RuntimeError(f"{dag_id} run for {logical_date} ended {run.state}; see the task logs above")


# --- the live feed: `pipelines up` extends the demo sources to the current hour ---------------------

LIVE_HOURS = 48  # the hourly feed starts this far back (the DAGs do not catch up on older hours)
LIVE_DAYS = 7


def feed_live(settings: Settings, now: datetime) -> list[str]:
    """Extend each demo source up to `now` (complete hours and days only), so that scheduled runs
    of unpaused demo DAGs find their data. Files regenerate identically: what exists is kept, and
    the demo's own January data is never touched. Returns what was written, for the log."""
    from pipelines.core.intervals import hours_between
    from pipelines.core.spec import load_spec
    from pipelines.dev.demo_data import DemoConfig, source_hour_file, write_sales_source, write_source

    def label_delay(model: str) -> timedelta:
        return timedelta(hours=load_spec(settings.specs_dir / f"{model}.yaml").label.delay_hours)

    written: list[str] = []
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    churn = settings.source / MODEL
    if churn.exists():
        config = DemoConfig(label_delay_hours=label_delay(MODEL) // timedelta(hours=1), drift_from=DRIFT_FROM)
        missing = [
            h
            for h in hours_between(max(DEMO_END, hour - timedelta(hours=LIVE_HOURS)), hour)
            if not source_hour_file(churn / "events", h).exists()
        ]
        for h in missing:
            write_source(churn, config, h, h + timedelta(hours=1))
        if missing:
            written.append(f"{MODEL} hours {missing[0]:%Y-%m-%d %H:00} .. {missing[-1]:%Y-%m-%d %H:00}")
    sales = settings.source / SALES
    if sales.exists():
        days = [
            day - timedelta(days=n)
            for n in range(LIVE_DAYS, 0, -1)
            if day - timedelta(days=n) >= SALES_END
            and not (sales / "events" / f"dt={day - timedelta(days=n):%Y-%m-%d}.csv").exists()
        ]
        for d in days:
            write_sales_source(sales, d, d + timedelta(days=1), label_delay(SALES))
        if days:
            written.append(f"{SALES} days {days[0]:%Y-%m-%d} .. {days[-1]:%Y-%m-%d}")
    warehouse = settings.source / ORDERS / "warehouse.db"
    until = warehouse.with_name("warehouse.until")
    if warehouse.exists() and (not until.exists() or until.read_text().strip() < f"{day:%Y-%m-%d}"):
        from pipelines.dev.demo_data import write_orders_warehouse

        write_orders_warehouse(warehouse, ORDERS_START, day, label_delay(ORDERS))
        until.write_text(f"{day:%Y-%m-%d}\n")
        written.append(f"{ORDERS} orders up to {day:%Y-%m-%d}")
    return written


# What a pipelines home holds; --reset refuses to delete a folder with anything else in it.
HOME_ENTRIES = {"airflow", "gx", "lake", "logs", "mlflow", "source", "tables.db", "tables.db-shm", "tables.db-wal"}


def reset_home(settings: Settings) -> None:
    """Start from nothing: the demo's timeline is fixed, so its state from an earlier run would collide."""
    if not settings.home.exists():
        return
    foreign = sorted(p.name for p in settings.home.iterdir() if p.name not in HOME_ENTRIES)
    if foreign:
        raise RuntimeError(
            f"refusing to reset {settings.home}: it holds {foreign[:5]}, which is not pipeline state; "
            "point PIPELINES_HOME at a folder of its own"
        )
    shutil.rmtree(settings.home)


def main(reset: bool = False) -> int:
    os.environ.setdefault("PIPELINES_TASK_RETRIES", "0")
    settings = get_settings()
    if reset:
        reset_home(settings)
    elif (settings.home / "tables.db").exists():
        print(
            f"{settings.home} already holds pipeline state; run `pipelines demo --reset` to start over", file=sys.stderr
        )
        return 2
    apply_airflow_environment(settings, demo_connections(settings.source))
    logging.basicConfig(level=logging.WARNING)
    began = time.perf_counter()
    print(f"pipelines demo: all state under {settings.home}", flush=True)
    migrate_airflow_db(settings)
    upgrade_schema(cli_settings().tables_url)  # where tasks will find the tables
    rows = write_demo_source(settings)
    print(f"  demo source: {rows} events {DEMO_START:%Y-%m-%d} .. {DEMO_END:%Y-%m-%d}, drift from {DRIFT_FROM}")

    first_night = datetime(2026, 1, 3, 2, tzinfo=UTC)
    run_dag(f"{MODEL}__train", first_night)
    for hour in range(6):
        start, end = first_night + timedelta(hours=hour), first_night + timedelta(hours=hour + 1)
        run_dag(f"{MODEL}__score", end)
        interval = {"interval_start": start.isoformat(), "interval_end": end.isoformat()}
        run_dag(f"{MODEL}__monitor", end, interval, when=f"{start:%H:%M}-{end:%H:%M} drift")
    run_dag(f"{MODEL}__train", first_night + timedelta(days=1))
    run_dag(f"{MODEL}__backtest", datetime(2026, 1, 4, 4, tzinfo=UTC))
    # The promoted v2 serves the next night, so the next backtest has a cohort per version.
    for hour in range(3):
        run_dag(f"{MODEL}__score", first_night + timedelta(days=1, hours=hour + 1))
    run_dag(f"{MODEL}__backtest", datetime(2026, 1, 5, 4, tzinfo=UTC))
    orders = write_orders_source(settings)
    print(f"  {ORDERS}: {orders} orders {ORDERS_START:%Y-%m-%d} .. {ORDERS_END:%Y-%m-%d} in a SQL warehouse")
    run_orders_demo()
    sales = write_sales_source(settings)
    print(f"  {SALES}: {sales} store-days {SALES_START:%Y-%m-%d} .. {SALES_END:%Y-%m-%d} in daily CSV files")
    run_sales_demo()
    print(f"demo finished in {time.perf_counter() - began:.0f}s; see `pipelines status`", flush=True)
    return 0
