"""Per-run cost of score, backtest and status as the prediction log grows from 5k to 5M rows.

The parent trains demo_churn in a fresh home (as bench/score_interval.py does), then in one process:
scores twelve demo hours and ingests their labels (the backtest's window), and fills the log with
`--small` older predictions and their labels (a year earlier, as a long-running model's history
is). It times one score of a fresh demo hour, the backtest of the same window and `status`, then
fills the log up to `--large` rows and times the same again. Same work both times; only the
stored history differs.

    python bench/growth.py [--small 5000] [--large 5000000] [--tables sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from score_interval import MODEL, scratch_postgres, set_up_home

SCORED_FROM = datetime(2026, 1, 3, 6, tzinfo=UTC)  # twelve hours scored, after the training night
BACKTEST_AT = datetime(2026, 1, 4, 4, tzinfo=UTC)
HISTORY_FROM = datetime(2025, 1, 1, tzinfo=UTC)


def history(start: int, rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Older predictions (one every 5 s from HISTORY_FROM) and their labels: rows start .. start+rows."""
    index = np.arange(start, start + rows)
    as_of = pd.Timestamp(HISTORY_FROM) + pd.to_timedelta(index * 5, unit="s")
    entity = pd.Series(index % 1_000_000).map("C{:06d}".format).astype("string")
    rng = np.random.default_rng(start)
    predictions = pd.DataFrame(
        {
            "model_name": MODEL,
            "entity_id": entity,
            "as_of": as_of,
            "model_version": "1",
            "score": rng.random(rows),
            "features_sha256": "0" * 64,
            "dag_run_id": "history",
            "scored_at": as_of + pd.Timedelta(minutes=5),
            "unseen_categories": 0,
        }
    )
    labels = pd.DataFrame(
        {
            "model_name": MODEL,
            "entity_id": entity,
            "as_of": as_of,
            "label": rng.integers(0, 2, rows).astype("float64"),
            "arrived_at": as_of + pd.Timedelta(hours=6),
        }
    )
    return predictions, labels


def fill(engine: object, start: int, rows: int) -> None:
    from pipelines.storage import bulk, tables

    for offset in range(start, start + rows, 500_000):
        predictions, labels = history(offset, min(500_000, start + rows - offset))
        with engine.begin() as connection:  # type: ignore[attr-defined]
            bulk.insert_frame(connection, tables.predictions, predictions)
            bulk.insert_frame(connection, tables.labels, labels)


def best_of(action: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return min(times)


def measure(small: int, large: int) -> None:
    from pipelines.airflow.connections import task_connection
    from pipelines.core.spec import load_spec
    from pipelines.stages.backtest import backtest
    from pipelines.stages.ingest import ingest
    from pipelines.stages.labels import ingest_labels
    from pipelines.stages.score import score_interval
    from pipelines.stages.validate import validate_and_publish
    from pipelines.storage.database import make_engine
    from pipelines.storage.settings import get_settings
    from pipelines.storage.sources import SourceAccess
    from pipelines.views.status import model_status

    settings = get_settings()
    spec = load_spec(settings.specs_dir / f"{MODEL}.yaml")
    engine = make_engine(settings.tables_url)
    access = SourceAccess(settings.source, task_connection)

    def score_hour(hour: datetime) -> None:
        end = hour + timedelta(hours=1)
        staged = ingest(spec, access, settings.lake, hour, end)
        validate_and_publish(
            spec, settings, engine, staged, hour, end, dag_id=f"{MODEL}__score", dag_run_id=f"growth {hour}"
        )
        score_interval(spec, settings, engine, hour, end, dag_run_id=f"growth {hour}")

    for hour in range(12):
        score_hour(SCORED_FROM + timedelta(hours=hour))
    ingest_labels(spec, access, engine, SCORED_FROM, BACKTEST_AT)
    fill(engine, 0, small)

    def timings(day: int) -> dict[str, float]:
        # The same hour of the day on another day: the demo gives it the same number of rows.
        fresh = [datetime(2026, 1, day, 20, tzinfo=UTC), datetime(2026, 1, day, 21, tzinfo=UTC)]
        score = min(best_of(lambda h=h: score_hour(h), 1) for h in fresh)
        run = f"growth backtest {day}"
        return {
            "score (one fresh demo hour: ingest, validate, score)": score,
            "backtest (7-day lookback, 12 scored hours)": best_of(
                lambda: backtest(spec, settings, engine, BACKTEST_AT, dag_run_id=run)
            ),
            "status": best_of(lambda: model_status(settings, engine, spec)),
        }

    timings(2)  # warm-up: imports, GX context and the model load out of the first figures
    before = timings(3)
    began = time.perf_counter()
    fill(engine, small, large - small)
    print(
        f"  filled the log from {small:,} to {large:,} older predictions (and labels) in {time.perf_counter() - began:.0f} s"
    )
    after = timings(4)
    print(f"  {'per run':<55} {small:>10,} rows  {large:>10,} rows   ratio")
    for name, seconds in before.items():
        print(f"  {name:<55} {seconds:9.3f} s  {after[name]:9.3f} s   {after[name] / seconds:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--large", type=int, default=5_000_000)
    parser.add_argument("--tables", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.small, args.large)
        return
    print(f"growth: {platform.machine()} {os.cpu_count()} cores, tables on {args.tables}, demo_churn")
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_growth_")))
        tables_url = stack.enter_context(scratch_postgres()) if args.tables == "postgres" else None
        env = set_up_home(home, tables_url)
        command = [sys.executable, __file__, "--child", "--small", str(args.small), "--large", str(args.large)]
        subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
