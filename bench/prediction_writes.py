"""Rows per second writing predictions: our bulk merge vs pandas `to_sql`, on SQLite and PostgreSQL.

A new interval (nothing logged in its scope yet) is bulk-inserted straight into the table
(`bulk.insert_frame`: binary COPY built by Arrow on PostgreSQL, chunked executemany on SQLite), as the
score stage does. `bulk.merge_frame` (an interval logged before) loads a staging table the same way
and merges with one INSERT ... SELECT ... ON CONFLICT, so it is an idempotent upsert, and also
deletes the scope's stale rows. `to_sql` only appends (a retry duplicates or violates the key),
so it does less work; it is the baseline the references use.

    python bench/prediction_writes.py [--rows 1000000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete

from pipelines.storage import bulk, database, tables

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KEY = ["model_name", "entity_id", "as_of"]
WATCH = ["model_version", "score", "features_sha256", "unseen_categories"]


def predictions(model: str, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return pd.DataFrame(
        {
            "model_name": model,
            "entity_id": [f"C{i:08d}" for i in range(rows)],
            "as_of": pd.date_range(start, periods=rows, freq="3ms", tz="UTC"),
            "model_version": "7",
            "score": rng.random(rows),
            "features_sha256": [f"{i:064x}" for i in range(rows)],
            "dag_run_id": "scheduled__2026-01-01T00:00:00+00:00",
            "scored_at": start + timedelta(hours=1),
            "unseen_categories": rng.integers(0, 2, rows),
        }
    )


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def clear(engine: Engine, model: str) -> None:
    with engine.begin() as connection:
        connection.execute(delete(tables.predictions).where(tables.predictions.c.model_name == model))


def insert_new(engine: Engine, frame: pd.DataFrame, model: str) -> None:
    """What the score stage does for an interval never scored: check its scope is empty, bulk-insert."""
    p = tables.predictions
    with engine.begin() as connection:
        assert not bulk.scope_has_rows(connection, p, p.c.model_name == model)
        bulk.insert_frame(connection, p, frame)


def bench_backend(name: str, engine: Engine, rows: int) -> None:
    p = tables.predictions
    new, ours, baseline = (f"bench_{kind}_{os.getpid()}" for kind in ("insert", "merge", "to_sql"))
    fresh, frame, base_frame = predictions(new, rows), predictions(ours, rows), predictions(baseline, rows)
    scope = p.c.model_name == ours
    try:
        to_sql = timed(
            lambda: base_frame.to_sql("predictions", engine, if_exists="append", index=False, chunksize=10_000)
        )
        inserted = timed(lambda: insert_new(engine, fresh, new))
        first = timed(lambda: bulk.merge_frame(engine, p, frame, KEY, update_when_changed=WATCH, replaces=scope))
        replay = timed(lambda: bulk.merge_frame(engine, p, frame, KEY, update_when_changed=WATCH, replaces=scope))
    finally:
        for model in (new, ours, baseline):
            clear(engine, model)
    print(f"{name:<10} pandas to_sql (append, baseline) : {to_sql:6.1f} s  {rows / to_sql:>10,.0f} rows/s")
    print(f"{name:<10} new interval (insert_frame)      : {inserted:6.1f} s  {rows / inserted:>10,.0f} rows/s  "
          f"({to_sql / inserted:.1f}x to_sql)")  # fmt: skip
    print(f"{name:<10} merge_frame, first write         : {first:6.1f} s  {rows / first:>10,.0f} rows/s  "
          f"({to_sql / first:.1f}x to_sql)")  # fmt: skip
    print(f"{name:<10} merge_frame, same rows again     : {replay:6.1f} s  {rows / replay:>10,.0f} rows/s  "
          "(changes nothing)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=os.environ.get("PIPELINES_BENCH_POSTGRES_URL", DEFAULT_POSTGRES))
    args = parser.parse_args()
    print(
        f"prediction writes: {args.rows:,} rows, {os.cpu_count()} CPU(s), {platform.python_version()}, "
        f"pandas {pd.__version__}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        database.upgrade_schema(f"sqlite:///{Path(scratch) / 'bench.db'}")
        sqlite = database.make_engine(f"sqlite:///{Path(scratch) / 'bench.db'}")
        bench_backend("sqlite", sqlite, args.rows)
        sqlite.dispose()
    database.upgrade_schema(args.postgres)  # the bench database at this code's schema (keeps its rows)
    postgres = database.make_engine(args.postgres)
    bench_backend("postgresql", postgres, args.rows)
    postgres.dispose()


if __name__ == "__main__":
    main()
