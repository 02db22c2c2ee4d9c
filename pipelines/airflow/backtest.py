"""The backtest DAG: ingest the window's labels, then metrics of whole cohorts of logged predictions."""

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
        f"Daily: ingest the labels that arrived over the last {spec.backtest.lookback_days} whole day(s), "
        "then join every logged prediction of those days (cohorts, by as_of date) with its label as known "
        f"at the interval's end; metrics per cohort x model version x slice of {spec.backtest.slices or '[]'} "
        "with the cohort's coverage (labelled of all predictions) and whether its labels are all due "
        f"({spec.label.delay_hours} h), appended to `backtest_metrics`, a plot in the lake and an MLflow run. "
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
        def ingest_window_labels(env: TaskEnv) -> Labelled:
            from pipelines.backtest import cohort_window

            # Every label that arrived in the window, not only in this interval: the result then depends
            # on the run's end alone, not on which runs (of this DAG or the monitor) ingested before.
            return ingest_labels(env, *cohort_window(spec, env.ctx.interval[1]))

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
                "backtest: %d labelled predictions over %d cohort(s); challenger %s replayed on %d rows; plot: %s",
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

        backtest(ingest_window_labels())  # type: ignore[arg-type]
    return dag
