"""The stages train and score share (stage, validate and publish the raw data) and train and
backtest share (ingest labels), with the typed results their tasks hand on through XCom."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from airflow.sdk import task

from pipelines.airflow.context import TaskEnv, pipeline_task, source_wait
from pipelines.core.spec import ModelSpec

log = logging.getLogger(__name__)


class Ingested(TypedDict):
    partitions: int
    rows: int
    data_sha256: str
    data_uri: str  # the snapshot manifest naming every object the run read
    staged: list[dict[str, Any]]  # the staged deliveries, validated then published by the next task


class Validated(TypedDict):
    suite: str
    suite_sha256: str
    success: bool
    result_uri: str
    data_docs: str
    rows_checked: int
    rows_quarantined: int


class Labelled(TypedDict):
    files_read: int
    rows: int
    missing_partitions: int


def ingest(env: TaskEnv, start: datetime, end: datetime) -> Ingested:
    from pipelines.stages.ingest import ingest as stage_interval
    from pipelines.stages.ingest import snapshot_sha256, write_snapshot_manifest

    staged = stage_interval(env.spec, env.sources, env.settings.lake, start, end)
    return {
        "partitions": len(staged),
        "rows": sum(int(d["rows"]) for d in staged),
        "data_sha256": snapshot_sha256(staged),
        "data_uri": write_snapshot_manifest(env.spec, env.settings.lake, start, end, staged),
        "staged": staged,
    }


def validate(env: TaskEnv, start: datetime, end: datetime, ingested: Ingested) -> Validated:
    from pipelines.stages.validate import validate_and_publish

    # The nightly training rebuilds Data Docs; the hourly scoring only adds its result to GX's store.
    outcome = validate_and_publish(
        env.spec, env.settings, env.engine, ingested["staged"], start, end, dag_id=env.ctx.dag_id, dag_run_id=env.ctx.run_id,
        data_docs=env.ctx.dag_id.endswith("__train"),
    )  # fmt: skip
    return {
        "suite": env.spec.suite,
        "suite_sha256": outcome.suite_sha256,
        "success": outcome.success,
        "result_uri": outcome.result_uri,
        "data_docs": outcome.data_docs_path,
        "rows_checked": outcome.rows_checked,
        "rows_quarantined": outcome.rows_quarantined,
    }


def ingest_labels(env: TaskEnv, start: datetime, end: datetime) -> Labelled:
    from pipelines.stages.labels import ingest_labels as ingest_label_files

    result = ingest_label_files(env.spec, env.sources, env.engine, start, end)
    return {"files_read": result.files_read, "rows": result.rows, "missing_partitions": len(result.missing_partitions)}


def wait_for_source(spec: ModelSpec, window: Callable[[TaskEnv], tuple[datetime, datetime]]) -> Any:
    """A sensor that waits, without holding a worker slot, until the window's events can be read, at
    most `source.wait_timeout_minutes` past the window's end, logging what is missing at every check;
    past that deadline it fails at once (an old interval's missing file will not arrive by waiting)."""
    allowed_delay, poke_interval = source_wait(spec)

    # Airflow's timeout (counted from the first check, which comes after the window's end) only backs
    # up await_source's deadline, which is counted from the window's end.
    @task.sensor(task_id="wait_for_source", mode="reschedule", poke_interval=poke_interval, timeout=allowed_delay)
    @pipeline_task(spec)
    def wait(env: TaskEnv) -> bool:
        from pipelines.storage.sources import await_source

        start, end = window(env)
        lacking = await_source(
            spec.source.events, env.sources, spec.timestamp, (start, end), spec.partition,
            allowed_delay=timedelta(seconds=allowed_delay), now=datetime.now(UTC),
        )  # fmt: skip
        if lacking:
            log.warning(
                "%s: [%s, %s) is not ready: %d part(s) missing, e.g. %s; waiting until %s",
                spec.name, start.isoformat(), end.isoformat(), len(lacking), lacking[:3],
                (end + timedelta(seconds=allowed_delay)).isoformat(),
            )  # fmt: skip
        return not lacking

    return wait()
