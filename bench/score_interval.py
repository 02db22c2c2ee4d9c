"""A large interval through the score path: CSV (or parquet) source file to the predictions table.

The parent sets up a fresh home (Airflow metadata, tables, MLflow) and trains demo_churn on the demo
data through its train DAG. Then, for each size, the score DAG's three stages (ingest, validate,
score) run the way its tasks call them, each in a process of its own as an Airflow task does, so
each peak RSS is that task's; the score stage's steps are timed apart, and raw `inplace_predict`
on the same rows in the score process is the baseline. With --dag, the whole score DAG also runs
through `dag.test()` on a second hour of the same size (all tasks in one process).

    python bench/score_interval.py [--rows 1000000 2000000] [--format csv|parquet] [--dag]
        [--tables sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MODEL = "demo_churn"
TRAIN_NIGHT = datetime(2026, 1, 3, 2, tzinfo=UTC)
FIRST_HOUR = datetime(2026, 1, 3, 10, tzinfo=UTC)  # a quiet hour of the demo timeline, after training
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def big_hour(hour: datetime, rows: int, seed: int = 0) -> pd.DataFrame:
    """`rows` demo events in one hour, vectorised; keys unique for up to 3.6M rows (ids repeat every 1M)."""
    from pipelines.dev.demo_data import PAYMENT_METHODS, PLANS, REGIONS

    rng = np.random.default_rng(seed)
    ids = rng.permutation(1_000_000)[np.arange(rows) % 1_000_000]
    seconds = np.arange(rows) * 3600 // rows
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series(ids).map("C{:06d}".format),
            "event_time": pd.Timestamp(hour) + pd.to_timedelta(seconds, unit="s"),
            "tenure_months": rng.integers(0, 73, size=rows),
            "monthly_charges": np.round(rng.normal(65, 20, size=rows).clip(15, 200), 2),
            "support_calls": rng.poisson(1.2, size=rows),
            "days_since_last_login": np.round(rng.exponential(6, size=rows), 1),
            "usage_minutes": np.round(rng.gamma(2.0, 72, size=rows), 1),
            "plan": rng.choice(PLANS, size=rows, p=[0.5, 0.35, 0.15]),
            "region": rng.choice(REGIONS, size=rows),
            "payment_method": pd.Series(rng.choice(PAYMENT_METHODS, size=rows), dtype=object),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "days_since_last_login"] = np.nan
    frame.loc[rng.random(rows) < 0.03, "payment_method"] = None
    return frame


def write_hour(source: Path, hour: datetime, rows: int, fmt: str) -> Path:
    from pipelines.dev.demo_data import source_hour_file, write_csv

    path = source_hour_file(source / MODEL / "events", hour)
    frame = big_hour(hour, rows)
    if fmt == "csv":
        write_csv(frame, path)
    else:
        path = path.with_suffix(".parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    return path


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1]) / 1024


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux VmHWM: unlike getrusage's maxrss, not inherited
    from the parent that forked it)."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """This process's resident memory now."""
    return _status_mb("VmRSS")


STAGES = ("ingest", "validate", "score")


def stage_child(stage: str, hour: datetime, handoff: Path) -> dict[str, object]:
    """One stage of the score DAG for one hour, in a process of its own as an Airflow task runs: its
    result goes to the next stage through `handoff` (as XCom would carry it)."""
    from pipelines.storage.settings import get_settings

    settings = get_settings()
    from pipelines.airflow.connections import task_connection
    from pipelines.core.spec import load_spec
    from pipelines.stages.ingest import ingest
    from pipelines.stages.score import score_interval
    from pipelines.stages.validate import validate_and_publish, warm_context
    from pipelines.storage.database import make_engine
    from pipelines.storage.registry import champion_version, load_model
    from pipelines.storage.sources import SourceAccess

    spec = load_spec(settings.specs_dir / f"{MODEL}.yaml")
    engine = make_engine(settings.tables_url)
    version = str(champion_version(settings, MODEL))
    if stage == "validate":
        warm_context(settings.gx_root)  # imports GX (7 s here): a task's start-up, not its work
    if stage == "score":
        load_model(settings, MODEL, version, spec.task)
    rss_before = rss_mb()
    start, end = hour, hour + timedelta(hours=1)
    run_id = f"bench__{hour:%Y%m%dT%H}"
    report: dict[str, object] = {"stage": stage, "rss_after_imports_mb": rss_before}
    began = time.perf_counter()
    if stage == "ingest":
        staged = ingest(spec, SourceAccess(settings.source, task_connection), settings.lake, start, end)
        handoff.write_text(json.dumps(staged, default=str))
        report["rows"] = sum(int(d["rows"]) for d in staged)
    elif stage == "validate":
        staged = json.loads(handoff.read_text())
        validate_and_publish(spec, settings, engine, staged, start, end, dag_id=f"{MODEL}__score", dag_run_id=run_id)
    else:
        result = score_interval(spec, settings, engine, start, end, dag_run_id=run_id)
        report["score_split"] = result.seconds
    report["seconds"] = time.perf_counter() - began
    report["peak_rss_mb"] = peak_rss_mb()
    if stage == "score":
        from pipelines.core.features import contract_of, prepare_features
        from pipelines.storage.lake import partition_key, read_partition

        frame, _ = read_partition(settings.lake, partition_key(MODEL, "raw", hour, spec.partition))
        booster = load_model(settings, MODEL, version, spec.task).booster
        features = prepare_features(frame, contract_of(booster))
        began = time.perf_counter()
        booster.inplace_predict(features)
        report["raw_predict_s"] = time.perf_counter() - began
    return report


def dag_child(hour: datetime) -> dict[str, object]:
    """The whole score DAG for one hour through dag.test(): every task in this one process."""
    from pipelines.airflow.embedded import apply_airflow_environment
    from pipelines.storage.settings import get_settings

    apply_airflow_environment(get_settings())
    os.environ["PIPELINES_SOURCE_WAIT_S"] = "0"
    from pipelines.airflow.dags import run_in_process

    began = time.perf_counter()
    run = run_in_process(f"{MODEL}__score", hour + timedelta(hours=1))
    return {"dag_s": time.perf_counter() - began, "dag_state": str(run.state), "peak_rss_mb": peak_rss_mb()}


def set_up_home(home: Path, tables_url: str | None) -> dict[str, str]:
    env = {**os.environ, "PIPELINES_HOME": str(home), "PIPELINES_TASK_RETRIES": "0", "GIT_PYTHON_REFRESH": "quiet"}
    if tables_url:
        env["PIPELINES_TABLES_URL"] = tables_url
    script = (
        "from datetime import datetime, UTC\n"
        "from pipelines.storage.settings import apply_airflow_environment, get_settings, migrate_airflow_db\n"
        "from pipelines.storage.database import upgrade_schema\n"
        "s = apply_airflow_environment(get_settings()); migrate_airflow_db(s); upgrade_schema(s.tables_url)\n"
        "from pipelines.dev.demo import write_demo_source, run_dag\n"
        "write_demo_source(s)\n"
        f"run_dag('{MODEL}__train', datetime.fromisoformat('{TRAIN_NIGHT.isoformat()}'))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=env, stdout=subprocess.DEVNULL)
    return env


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A database of its own on the PostgreSQL server (BENCH_POSTGRES_URL names the server), dropped after."""
    import psycopg
    from sqlalchemy import make_url

    server = make_url(os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES))
    name = f"bench_{os.getpid()}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--tables", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--dag", action="store_true", help="also run the whole score DAG through dag.test()")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        if kind == "stage":
            report = stage_child(rest[0], datetime.fromisoformat(rest[1]), Path(rest[2]))
        else:
            report = dag_child(datetime.fromisoformat(rest[0]))
        print("REPORT " + json.dumps(report))
        return

    print(f"score_interval: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"pandas {pd.__version__}, tables on {args.tables}, source files {args.format}")  # fmt: skip
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_score_")))
        tables_url = stack.enter_context(scratch_postgres()) if args.tables == "postgres" else None
        began = time.perf_counter()
        env = set_up_home(home, tables_url)
        print(f"  set-up (Airflow db, demo data, train DAG): {time.perf_counter() - began:.0f} s")
        if args.format == "parquet":
            spec_dir = home / "specs"
            spec_dir.mkdir()
            text = (Path(__file__).parents[1] / "dags" / "models" / f"{MODEL}.yaml").read_text()
            (spec_dir / f"{MODEL}.yaml").write_text(
                text.replace('hour={start:%H}.csv"\n', 'hour={start:%H}.parquet"\n', 1)
            )
            env["PIPELINES_SPECS_DIR"] = str(spec_dir)
        for index, rows in enumerate(args.rows):
            hour = FIRST_HOUR + timedelta(hours=2 * index)
            write_hour(home / "source", hour, rows, args.format)
            handoff = home / f"staged-{index}.json"
            reports = [run_child(env, ["stage", stage, hour.isoformat(), str(handoff)]) for stage in STAGES]
            dag = None
            if args.dag:
                write_hour(home / "source", hour + timedelta(hours=1), rows, args.format)
                dag = run_child(env, ["dag", (hour + timedelta(hours=1)).isoformat()])
            print_report(reports, dag)


def run_child(env: dict[str, str], spec: list[str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, check=True, capture_output=True, text=True
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("REPORT "))
    return dict(json.loads(line.removeprefix("REPORT ")))


def print_report(reports: list[dict[str, Any]], dag: dict[str, Any] | None) -> None:
    rows = int(reports[0]["rows"])
    total = sum(float(r["seconds"]) for r in reports)
    score = reports[-1]
    raw = float(score["raw_predict_s"])
    print(f"\n  {rows:,} rows in one hour; each stage in a process of its own, as its Airflow task runs")
    for report in reports:
        seconds = float(report["seconds"])
        print(f"    {report['stage']:<9} {seconds:6.2f} s {rows / seconds:>10,.0f} rows/s {seconds / total:4.0%}   "
              f"peak RSS {report['peak_rss_mb']:5.0f} MB ({report['rss_after_imports_mb']:.0f} MB after imports)")  # fmt: skip
    for name, value in score["score_split"].items():
        print(f"      score.{name:<12} {value:6.2f} s")
    print(f"    stages, end to end: {total:6.2f} s  {rows / total:>10,.0f} rows/s")
    print(f"    raw inplace_predict: {raw:5.2f} s  {rows / raw:>10,.0f} rows/s  (end to end is {total / raw:.1f}x)")
    if dag is not None:
        dag_s = float(dag["dag_s"])
        print(f"    score DAG via dag.test() on another hour of {rows:,}: {dag_s:.2f} s ({dag['dag_state']}), "
              f"{rows / dag_s:,.0f} rows/s, {dag_s / total:.2f}x the stages; peak RSS {dag['peak_rss_mb']:.0f} MB "
              "(all its tasks in one process)")  # fmt: skip


if __name__ == "__main__":
    main()
