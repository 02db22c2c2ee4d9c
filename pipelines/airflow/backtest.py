"""The backtest DAG: ingest the day's labels, then metrics of the logged predictions whose labels matured."""

from __future__ import annotations

import logging
from typing import TypedDict

from airflow.sdk import DAG, CronDataIntervalTimetable, task

from pipelines.airflow.context import TaskEnv, common_dag_args, pipeline_task
from pipelines.airflow.ingest import Labelled, ingest_labels
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)


class Backtested(TypedDict):
    rows: int
    cohorts: int
    challenger_version: str | None
    replayed_rows: int
    summary: dict[str, float]
    plot_uri: str
    mlflow_run_id: str


def backtest_dag(spec: ModelSpec) -> DAG:
    doc = (
        f"Daily: ingest the labels that arrived in the interval, then join the logged predictions of "
        f"the last {spec.backtest.lookback_days} day(s) with labels whose {spec.label.delay_hours} h "
        "delay has passed; metrics per cohort (as_of date) x model version x slice of "
        f"{spec.backtest.slices or '[]'} into `backtest_metrics`, a plot in the lake and an MLflow run. "
        f"A challenger that is not serving replays the logged inputs of the last "
        f"{spec.backtest.replay_intervals} matured hours; its rows have scored_by = replay."
    )
    with DAG(
        schedule=CronDataIntervalTimetable(spec.schedules.backtest, timezone="UTC"),
        **common_dag_args(spec, "backtest", doc),
    ) as dag:
        step = pipeline_task(spec)

        @task(task_id="ingest_labels")
        @step
        def ingest_interval_labels(env: TaskEnv) -> Labelled:
            return ingest_labels(env, *env.ctx.interval)

        @task
        @step
        def backtest(env: TaskEnv, labelled: Labelled) -> Backtested:
            from pipelines.backtest import backtest as run_backtest
            from pipelines.registry import CHALLENGER, alias_version, champion_version

            challenger = alias_version(env.settings, spec.name, CHALLENGER)
            if challenger == champion_version(env.settings, spec.name):
                challenger = None  # already serving: its logged scores are its backtest
            result = run_backtest(spec, env.settings, env.engine, env.ctx.interval[1], env.ctx.run_id, challenger)
            log.info(
                "backtest: %d matured predictions over %d cohort(s); challenger %s replayed on %d rows; plot: %s",
                result.rows,
                result.cohorts,
                f"v{challenger}" if challenger else "(none)",
                result.replayed_rows,
                result.plot_uri,
            )
            return {
                "rows": result.rows,
                "cohorts": result.cohorts,
                "challenger_version": challenger,
                "replayed_rows": result.replayed_rows,
                "summary": result.summary,
                "plot_uri": result.plot_uri,
                "mlflow_run_id": result.mlflow_run_id,
            }

        backtest(ingest_interval_labels())  # type: ignore[arg-type]
    return dag
