"""The score DAG: stage, validate and publish the hour, score it with the champion, log the predictions."""

from __future__ import annotations

from typing import TypedDict

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, get_current_context, task

from pipelines.airflow.context import TaskEnv, common_dag_args, pipeline_task, predictions_asset
from pipelines.airflow.ingest import Ingested, Validated, ingest, validate, wait_for_source
from pipelines.core.spec import ModelSpec


class Scored(TypedDict):
    model_version: str
    rows: int
    unseen_categories: dict[str, int]
    stale_rows_deleted: int
    scored: list[str]


SCORE_PARAMS = {
    "rescore_with": Param(
        None,
        type=["null", "string"],
        description="Leave empty: an hour already scored is scored again by the version that served it, and its "
        "logged predictions never change. 'champion' or a version number: replace them with that version's "
        "scores (the replaced rows are kept in predictions_history).",
    ),
}


def score_dag(spec: ModelSpec) -> DAG:
    doc = (
        "Hourly: stage the interval, validate it and publish it, check it against the champion's signature, "
        "score it with `models:/<name>@champion` (an hour scored before: with the version that served it, "
        "unless the `rescore_with` param says otherwise), keep the scored inputs in the lake, append the "
        f"predictions to the log. Emits the `{spec.name}__predictions` Asset, which runs `{spec.name}__monitor`."
    )
    with DAG(
        schedule=CronDataIntervalTimetable(spec.schedules.score, timezone="UTC"),
        params=SCORE_PARAMS,
        **common_dag_args(spec, "score", doc),
    ) as dag:
        step = pipeline_task(spec)

        @task
        @step
        def ingest_interval(env: TaskEnv) -> Ingested:
            return ingest(env, *env.ctx.interval)

        @task
        @step
        def validate_interval(env: TaskEnv, ingested: Ingested) -> Validated:
            return validate(env, *env.ctx.interval, ingested)

        @task(outlets=[predictions_asset(spec)])
        @step
        def score(env: TaskEnv, validated: Validated) -> Scored:
            from pipelines.stages.score import score_interval

            start, end = env.ctx.interval
            choice = env.ctx.params.get("rescore_with")
            result = score_interval(
                spec,
                env.settings,
                env.engine,
                start,
                end,
                dag_run_id=env.ctx.run_id,
                rescore_with=str(choice).strip() if choice else None,
            )
            # The monitor DAG runs on this event and reads which interval to watch from it.
            get_current_context()["outlet_events"][predictions_asset(spec)].extra = {
                "kind": "predictions",
                "interval_start": start.isoformat(),
                "interval_end": end.isoformat(),
                "model_version": result.model_version,
                "rows": result.rows,
            }
            return {
                "model_version": result.model_version,
                "rows": result.rows,
                "unseen_categories": result.unseen_categories,
                "stale_rows_deleted": result.stale_rows_deleted,
                "scored": result.scored_uris,
            }

        wait_for_source(spec, lambda env: env.ctx.interval) >> (staged := ingest_interval())
        score(validate_interval(staged))  # type: ignore[arg-type]
    return dag
