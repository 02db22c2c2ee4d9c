"""What Airflow adds: a warm score + monitor DAG run through `dag.test()` against the same stage
functions called directly, on demo hours of about 1,000 rows, in the same process.

The parent trains demo_churn in a fresh home (as bench/score_interval.py does). The child warms up
both ways on two hours (imports, GX context, model and reference loads), then alternates: one hour
through the stage functions, the next through the two DAG runs, and so on.

    python bench/orchestration.py [--hours 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from score_interval import MODEL, set_up_home

FIRST_HOUR = datetime(2026, 1, 3, 6, tzinfo=UTC)


def measure(hours: int) -> None:
    from pipelines.airflow.embedded import apply_airflow_environment
    from pipelines.storage.settings import get_settings

    apply_airflow_environment(get_settings())
    os.environ["PIPELINES_SOURCE_WAIT_S"] = "0"
    from pipelines.airflow.connections import task_connection, task_settings
    from pipelines.airflow.dags import run_in_process
    from pipelines.core.errors import SourceMissingError
    from pipelines.core.spec import load_spec
    from pipelines.stages.drift import monitor_interval
    from pipelines.stages.drift_policy import evaluate
    from pipelines.stages.ingest import ingest
    from pipelines.stages.labels import ingest_labels
    from pipelines.stages.quality import quality_interval
    from pipelines.stages.score import score_interval
    from pipelines.stages.validate import validate_and_publish
    from pipelines.storage.database import make_engine
    from pipelines.storage.sources import SourceAccess

    settings = task_settings()
    spec = load_spec(settings.specs_dir / f"{MODEL}.yaml")

    def stages(start: datetime) -> None:
        end, run_id = start + timedelta(hours=1), f"direct {start}"
        engine = make_engine(settings.tables_url)  # as each task makes its own
        access = SourceAccess(settings.source, task_connection)
        staged = ingest(spec, access, settings.lake, start, end)
        validate_and_publish(spec, settings, engine, staged, start, end, dag_id=f"{MODEL}__score", dag_run_id=run_id)
        score_interval(spec, settings, engine, start, end, dag_run_id=run_id)
        monitor_interval(spec, settings, engine, start, end, dag_run_id=run_id)
        with contextlib.suppress(SourceMissingError):  # as the monitor's task: labels may not be due yet
            ingest_labels(spec, access, engine, start, end)
        quality_interval(spec, settings, engine, start, end, dag_run_id=run_id)
        evaluate(spec, settings, engine, end)
        engine.dispose()

    def dags(start: datetime) -> None:
        end = start + timedelta(hours=1)
        for dag_id, conf in (
            (f"{MODEL}__score", None),
            (f"{MODEL}__monitor", {"interval_start": start.isoformat(), "interval_end": end.isoformat()}),
        ):
            run = run_in_process(dag_id, None if conf else end, run_conf=conf, run_after=end if conf else None)
            if run.state != "success":
                raise RuntimeError(f"{dag_id} for {start} ended {run.state}")

    def timed(action: Callable[[datetime], None], start: datetime) -> float:
        began = time.perf_counter()
        action(start)
        return time.perf_counter() - began

    stages(FIRST_HOUR)
    dags(FIRST_HOUR + timedelta(hours=1))
    direct, through_airflow = [], []
    for index in range(hours):
        hour = FIRST_HOUR + timedelta(hours=2 + 2 * index)
        direct.append(timed(stages, hour))
        through_airflow.append(timed(dags, hour + timedelta(hours=1)))
    d, a = sum(direct) / hours, sum(through_airflow) / hours
    print(f"  stage functions called directly : {d:6.2f} s per hour (mean of {hours}: {[round(x, 2) for x in direct]})")
    print(
        f"  score + monitor DAGs, dag.test(): {a:6.2f} s per hour (mean of {hours}: {[round(x, 2) for x in through_airflow]})"
    )
    print(f"  orchestration costs {a / d:.2f}x the stages")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.hours)
        return
    print(f"orchestration: {platform.machine()} {os.cpu_count()} cores, demo_churn hours of ~1,000 rows, SQLite")
    with tempfile.TemporaryDirectory(prefix="bench_orchestration_") as home:
        env = set_up_home(Path(home), None)
        subprocess.run([sys.executable, __file__, "--child", "--hours", str(args.hours)], env=env, check=True)


if __name__ == "__main__":
    main()
