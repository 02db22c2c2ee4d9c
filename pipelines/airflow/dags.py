"""One model spec's DAG family, and running one of its DAG runs in process."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from pipelines.airflow.backtest import backtest_dag
from pipelines.airflow.monitor import monitor_dag
from pipelines.airflow.rollback import rollback_dag
from pipelines.airflow.score import score_dag
from pipelines.airflow.train import train_dag
from pipelines.core.spec import ModelSpec, load_spec

# The builder of each DAG kind of pipelines/core/dag_kinds.py (a test keeps the two in step).
DAG_BUILDERS: dict[str, Callable[[ModelSpec], DAG]] = {
    "train": train_dag,
    "score": score_dag,
    "monitor": monitor_dag,
    "backtest": backtest_dag,
    "rollback": rollback_dag,
}


def model_dags(spec_path: Path | str) -> dict[str, DAG]:
    """The DAG family of one spec, keyed by dag_id. A bad spec raises SpecError naming file and field."""
    spec = load_spec(spec_path)
    return {dag.dag_id: dag for dag in (build(spec) for build in DAG_BUILDERS.values())}


def load_dag(dag_id: str) -> Any:
    """One DAG of the project's dags/ folder, parsed."""
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.core.project import find_project

    dags_dir = find_project().dags_dir
    # A model's DAGs live in dags/<model>.py: parse that file alone (the whole folder costs ~0.3 s a
    # run here, and a backfill runs many); a DAG found nowhere else falls back to the folder.
    own_file = dags_dir / f"{dag_id.split('__')[0]}.py"
    dag = DagBag(own_file).get_dag(dag_id) if own_file.exists() else None
    if dag is None:
        bag = DagBag(dags_dir)
        dag = bag.get_dag(dag_id)
        if dag is None:
            raise LookupError(f"DAG {dag_id} not found; import errors: {bag.import_errors or 'none'}")
    return dag


def run_in_process(
    dag_id: str,
    logical_date: datetime | None,
    run_conf: dict[str, Any] | None = None,
    run_after: datetime | None = None,
) -> Any:
    """Run one DAG run of our dags/ folder with `dag.test()` (no scheduler) and return the DagRun.

    run_after defaults to the logical date, so the run id names the interval (not the wall clock)
    and running the same interval again re-runs that same DAG run; pass another run_after for a
    second run of the same interval. A DAG without a schedule takes logical_date=None.
    """
    dag = load_dag(dag_id)
    began = datetime.now(UTC)
    with task_log_files():
        run = dag.test(logical_date=logical_date, run_after=run_after or logical_date, run_conf=run_conf)
    record_real_start(run, began)
    return run


class TaskLogFiles(logging.Handler):
    """Writes each log record of a task that dag.test() runs in this thread to that task's log file.

    A worker writes these files; dag.test() writes none, and the UI would say "not found on worker".
    The lines are JSON in the shape Airflow's log reader parses (timestamp, level, event, logger),
    with secrets masked as in a worker's log.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        from airflow.configuration import conf
        from airflow.utils.helpers import log_filename_template_renderer

        self.base = Path(conf.get("logging", "base_log_folder"))
        self.filename = log_filename_template_renderer()  # the same renderer workers use
        self.thread = threading.get_ident()  # the task context is process-wide: other threads' records are not its

    def emit(self, record: logging.LogRecord) -> None:
        from airflow.sdk import get_current_context
        from airflow.sdk._shared.secrets_masker import redact

        if record.thread != self.thread:
            return
        try:
            ti = get_current_context()["ti"]
        except (RuntimeError, KeyError):  # a record from outside a task (dag.test's own loop)
            return
        try:
            path = self.base / self.filename(ti=ti, try_number=ti.try_number)
            path.parent.mkdir(parents=True, exist_ok=True)
            line = {
                "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "event": redact(record.getMessage()),
                "logger": record.name,
            }
            if record.exc_info:
                line["error_detail"] = redact(logging.Formatter().formatException(record.exc_info))
            with path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(line, default=str) + "\n")
        except Exception:
            self.handleError(record)


@contextmanager
def task_log_files() -> Iterator[None]:
    """Task log files for the tasks run in this process, while the block runs."""
    handler = TaskLogFiles()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def record_real_start(run: Any, began: datetime) -> None:
    """dag.test() dates a run's start at its logical date; the UI would show a run of 2026-01-03
    run on 2026-12-03 as lasting eleven months. Record when it really started."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(DagRun).where(DagRun.dag_id == run.dag_id, DagRun.run_id == run.run_id).values(start_date=began)
        )
    run.start_date = began
