"""The stages train and score share (stage, validate and publish the raw data) and train and
backtest share (ingest labels), with the typed results their tasks hand on through XCom."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from pipelines.airflow.context import TaskEnv


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
    missing_hours: int


def ingest(env: TaskEnv, start: datetime, end: datetime) -> Ingested:
    from pipelines.ingest import ingest as stage_interval
    from pipelines.ingest import snapshot_sha256, write_snapshot_manifest

    staged = stage_interval(env.spec, env.settings.source, env.settings.lake, start, end)
    return {
        "partitions": len(staged),
        "rows": sum(int(d["rows"]) for d in staged),
        "data_sha256": snapshot_sha256(staged),
        "data_uri": write_snapshot_manifest(env.spec, env.settings.lake, start, end, staged),
        "staged": staged,
    }


def validate(env: TaskEnv, start: datetime, end: datetime, ingested: Ingested) -> Validated:
    from pipelines.validate import validate_and_publish

    outcome = validate_and_publish(
        env.spec, env.settings, env.engine, ingested["staged"], start, end, env.ctx.dag_id, env.ctx.run_id
    )
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
    from pipelines.labels import ingest_labels as ingest_label_files

    result = ingest_label_files(env.spec, env.settings.source, env.engine, start, end)
    return {"files_read": result.files_read, "rows": result.rows, "missing_hours": len(result.missing_hours)}
