"""The backtest DAG: ingest the window's labels, then metrics of whole cohorts of logged predictions."""

from __future__ import annotations

import logging
from typing import Any, TypedDict

from airflow.sdk import DAG, CronDataIntervalTimetable, get_current_context, task

from pipelines.airflow.context import TaskEnv, common_dag_args, pipeline_task
from pipelines.airflow.ingest import Labelled, ingest_labels
from pipelines.airflow.train import approval_task
from pipelines.core.spec import ModelSpec

log = logging.getLogger(__name__)


class Backtested(TypedDict):
    rows: int
    cohorts: int
    challenger_version: str | None
    replayed_rows: int
    summary: dict[str, float]
    plot_uri: str
    mlflow_run_id: str
    hearing: dict[str, Any] | None  # the kept challenger's second hearing (pipelines/stages/promotion.py)


def backtest_dag(spec: ModelSpec) -> DAG:
    doc = (
        f"Daily: ingest the labels that arrived over the last {spec.backtest.lookback_days} whole day(s), "
        "then join every logged prediction of those days (cohorts, by as_of date) with its label as known "
        f"at the interval's end; metrics per cohort x model version x slice of {spec.backtest.slices or '[]'} "
        "with the cohort's coverage (labelled of all predictions) and whether its labels are all due "
        f"({spec.label.delay_hours} h), appended to `backtest_metrics`, a plot in the lake and an MLflow run. "
        f"A challenger that is not serving replays the logged inputs of the last "
        f"{spec.backtest.replay_intervals} matured hours; its rows have scored_by = replay. When its replays "
        f"beat the champion over {spec.gate.second_hearing_cohorts} whole cohorts (gate.second_hearing_cohorts), "
        f"the gate proposes it again, in mode {spec.gate.mode}: `approve` asks a human in manual mode, `promote` "
        "moves the alias."
    )
    with DAG(
        schedule=CronDataIntervalTimetable(spec.schedules.backtest, timezone="UTC"),
        **common_dag_args(spec, "backtest", doc),
    ) as dag:
        step = pipeline_task(spec)

        @task(task_id="ingest_labels")
        @step
        def ingest_window_labels(env: TaskEnv) -> Labelled:
            from pipelines.stages.backtest import cohort_window

            # Every label that arrived in the window, not only in this interval: the result then depends
            # on the run's end alone, not on which runs (of this DAG or the monitor) ingested before.
            return ingest_labels(env, *cohort_window(spec, env.ctx.interval[1]))

        @task
        @step
        def backtest(env: TaskEnv, labelled: Labelled) -> Backtested:
            from pipelines.stages.backtest import backtest as run_backtest
            from pipelines.stages.promotion import rehear_challenger
            from pipelines.storage.registry import CHALLENGER, alias_version, champion_version

            challenger = alias_version(env.settings, spec.name, CHALLENGER)
            if challenger == champion_version(env.settings, spec.name):
                challenger = None  # already serving: its logged scores are its backtest
            result = run_backtest(
                spec, env.settings, env.engine, env.ctx.interval[1], dag_run_id=env.ctx.run_id, challenger=challenger
            )
            log.info(
                "backtest: %d labelled predictions over %d cohort(s); challenger %s replayed on %d rows; plot: %s",
                result.rows,
                result.cohorts,
                f"v{challenger}" if challenger else "(none)",
                result.replayed_rows,
                result.plot_uri,
            )
            ctx = env.ctx
            hearing = rehear_challenger(
                spec,
                env.settings,
                env.engine,
                ctx.interval[1],
                dag_id=ctx.dag_id,
                dag_run_id=ctx.run_id,
                actor=ctx.actor,
            )
            return {
                "rows": result.rows,
                "cohorts": result.cohorts,
                "challenger_version": challenger,
                "replayed_rows": result.replayed_rows,
                "summary": result.summary,
                "plot_uri": result.plot_uri,
                "mlflow_run_id": result.mlflow_run_id,
                "hearing": None if hearing is None else hearing.record(),
            }

        @task.branch
        @step
        def route(env: TaskEnv, backtested: Backtested) -> list[str]:
            """A second hearing that passed goes on to `promote`, through `approve` in manual mode; else both skip."""
            action = (backtested["hearing"] or {}).get("action")
            return {"promote": ["promote"], "await_approval": ["approve", "promote"]}.get(str(action), [])

        # Runs after an approval, and also when the approval was skipped (no human needed).
        @task(trigger_rule="none_failed")
        @step
        def promote(env: TaskEnv, backtested: Backtested) -> str:
            from pipelines.stages.gate import GateDecision
            from pipelines.stages.promotion import apply_decision

            approval = get_current_context()["ti"].xcom_pull(task_ids="approve")
            decision = backtested["hearing"]
            if decision is None:  # only when run by hand: route skips it then
                return "no second hearing"
            return apply_decision(
                env.settings, env.engine, GateDecision.model_validate(decision), approval=approval,
                dag_run_id=env.ctx.run_id, actor=env.ctx.actor,
            )  # fmt: skip

        backtested = backtest(ingest_window_labels())  # type: ignore[arg-type]
        approve = approval_task(spec, "ti.xcom_pull(task_ids='backtest')['hearing']")
        promoted = promote(backtested)  # type: ignore[arg-type]
        route(backtested) >> [approve, promoted]  # type: ignore[arg-type]
        approve >> promoted
    return dag
