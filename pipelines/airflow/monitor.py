"""The monitor DAG: a drift report per scored interval, then the drift policy, which may ask for retraining."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, TypedDict

from airflow.sdk import DAG, Param, get_current_context, task

from pipelines.airflow.context import (
    RunContext,
    TaskEnv,
    as_utc,
    common_dag_args,
    drift_asset,
    pipeline_task,
    predictions_asset,
    run_actor,
)
from pipelines.airflow.ingest import ingest_labels
from pipelines.core.errors import PermanentError
from pipelines.core.spec import ModelSpec

log = logging.getLogger(__name__)


class DriftReport(TypedDict):
    interval_end: str
    report: str
    drift_share: float
    drifted_columns: list[str]
    prediction_drift: bool | None


class QualityReport(TypedDict):
    interval_end: str
    metrics: dict[str, float]
    report: str | None  # None: Evidently could not judge the window (a class absent from its labels)


MONITOR_PARAMS = {
    "interval_start": Param(
        None,
        type=["null", "string"],
        format="date-time",
        description="Manual runs: the scored interval to monitor (runs triggered by scoring read it from the event)",
    ),
    "interval_end": Param(None, type=["null", "string"], format="date-time", description="Its end"),
}


def monitored_intervals(ctx: RunContext) -> list[tuple[datetime, datetime]]:
    """The scored intervals this run watches: from the triggering predictions events, else from the params."""
    events = [e for e in ctx.triggering_events if e.get("kind") == "predictions"]
    if events:
        pairs = {(str(e["interval_start"]), str(e["interval_end"])) for e in events}
    else:
        if not ctx.params.get("interval_start") or not ctx.params.get("interval_end"):
            raise PermanentError(
                f"{ctx.dag_id}: no predictions event triggered this run: give the params interval_start and interval_end"
            )
        pairs = {(str(ctx.params["interval_start"]), str(ctx.params["interval_end"]))}
    return sorted((as_utc(a), as_utc(b)) for a, b in pairs)


def latest_window_end(reports: list[DriftReport]) -> datetime:
    return max(datetime.fromisoformat(r["interval_end"]) for r in reports)


def monitor_dag(spec: ModelSpec) -> DAG:
    policy = spec.drift
    doc = (
        f"Runs on each `{spec.name}__predictions` event: an Evidently drift report (DataDriftPreset over the "
        "features, and prediction drift on the model's score) of the scored interval against the reference "
        f"sample stored with the serving version, sampled to {policy.max_current_rows} rows; the HTML goes to "
        "the lake, per-column results to `drift_metrics`. A window drifted when at least "
        f"{policy.drift_share:.0%} of the feature columns did. When {policy.drifted_windows} of the last "
        f"{policy.windows} windows drifted and no retraining happened in the last {policy.cooldown_hours} h, "
        f"`request_retraining` emits `{spec.name}__drift`, which runs `{spec.name}__train`. Beside it, "
        f"`quality_report` ingests the labels that arrived and measures the {spec.task} model's quality "
        f"(an Evidently report, `quality_reports`) on the window {spec.label.delay_hours} h earlier, whose "
        "labels are due by now."
    )
    with DAG(schedule=[predictions_asset(spec)], params=MONITOR_PARAMS, **common_dag_args(spec, "monitor", doc)) as dag:
        step = pipeline_task(spec)

        @task
        @step
        def drift_report(env: TaskEnv) -> list[DriftReport]:
            from pipelines.stages.drift import monitor_interval

            reports: list[DriftReport] = []
            for start, end in monitored_intervals(env.ctx):
                summary = monitor_interval(spec, env.settings, env.engine, start, end, dag_run_id=env.ctx.run_id)
                log.info(
                    "DRIFT report %s: %d of %d feature columns drifted (%.3f: %s), prediction drift %s",
                    summary.report_path or "(none: no scored rows)",
                    len(summary.drifted_columns),
                    len(summary.features),
                    summary.drift_share,
                    ", ".join(summary.drifted_columns) or "none",
                    summary.prediction_drift,
                )
                reports.append(
                    {
                        "interval_end": end.isoformat(),
                        "report": summary.report_path,
                        "drift_share": summary.drift_share,
                        "drifted_columns": summary.drifted_columns,
                        "prediction_drift": summary.prediction_drift,
                    }
                )
            return reports

        @task
        @step
        def quality_report(env: TaskEnv) -> list[QualityReport]:
            """The task's metrics and Evidently quality report of the window whose labels arrived by now."""
            from pipelines.core.errors import SourceMissingError
            from pipelines.stages.quality import quality_interval

            judged: list[QualityReport] = []
            for start, end in monitored_intervals(env.ctx):
                try:
                    ingest_labels(env, start, end)  # the labels that arrived meanwhile
                except SourceMissingError as exc:
                    # The backtest waits for this feed; quality is judged on the labels known by now.
                    log.warning("%s: labels of [%s, %s) not delivered yet: %s", spec.name, start, end, exc)
                summary = quality_interval(spec, env.settings, env.engine, start, end, dag_run_id=env.ctx.run_id)
                if summary is None:
                    continue
                shown = {k: round(v, 4) for k, v in summary.metrics.items() if isinstance(v, float)}
                log.info(
                    "QUALITY of [%s, %s) (v%s, %d labelled rows): %s; report %s",
                    summary.start.isoformat(), summary.end.isoformat(), summary.model_version, summary.rows,
                    shown, summary.report_path or "none (a class absent from its labels)",
                )  # fmt: skip
                judged.append(
                    {"interval_end": summary.end.isoformat(), "metrics": shown, "report": summary.report_path}
                )
            return judged

        @task.short_circuit
        @step
        def drift_persists(env: TaskEnv, reports: list[DriftReport]) -> bool:
            from pipelines.stages.drift_policy import evaluate

            verdict = evaluate(spec, env.settings, env.engine, latest_window_end(reports))
            log.info("DRIFT policy at %s: %s", verdict.window_end, verdict.reason)
            return verdict.retrain

        @task(outlets=[drift_asset(spec)])
        @step
        def request_retraining(env: TaskEnv, reports: list[DriftReport]) -> dict[str, Any]:
            from pipelines.stages.drift_policy import record_trigger, stored_verdict

            context = get_current_context()
            verdict = stored_verdict(env.engine, spec.name, latest_window_end(reports))
            request = record_trigger(env.engine, spec.name, verdict, env.ctx.run_id, run_actor(context["dag_run"]))
            context["outlet_events"][drift_asset(spec)].extra = {**request, "kind": "drift"}
            log.info("DRIFT retraining requested: %s (report %s)", request["reason"], request["report"])
            return request

        reports = drift_report()
        drift_persists(reports) >> request_retraining(reports)  # type: ignore[arg-type]
        quality_report()
    return dag
