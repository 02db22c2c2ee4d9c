"""The only module of `pipelines` that imports Airflow: it turns one model spec into its DAG family.

Each task is a thin wrapper: it reads the data interval from the Airflow context, calls one
stage function, and returns a small JSON-able summary for XCom. Heavy libraries are imported by
the stage modules inside the task, never while the DAG file is parsed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronDataIntervalTimetable, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from pipelines.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)

# Retries cover transient trouble (a late source file, a busy database). The demo and the tests
# set PIPELINES_TASK_RETRIES=0: dag.test() has no scheduler and would sit out each retry delay.
DEFAULT_RETRIES = int(os.environ.get("PIPELINES_TASK_RETRIES", "2"))
DEFAULT_RETRY_DELAY = timedelta(minutes=5)


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    run_id: str
    logical_date: str
    start: datetime
    end: datetime
    actor: str  # who made this run happen, for the model_events log
    params: dict[str, Any]
    drift: dict[str, Any] | None  # the drift policy's request, when drift triggered this run


def _utc(value: Any) -> datetime:
    return datetime.fromtimestamp(value.timestamp(), tz=UTC)


def run_actor(dag_run: Any) -> str:
    user = getattr(dag_run, "triggering_user_name", None)
    return f"airflow:{user}" if user else "airflow:scheduler"


def asset_events(context: Any) -> list[dict[str, Any]]:
    """The extras of the Asset events that triggered this run (none for scheduled or manual runs)."""
    events = context.get("triggering_asset_events") or {}
    return [dict(event.extra or {}) for _, asset_events_ in events.items() for event in asset_events_]


def run_context() -> RunContext:
    context = get_current_context()
    dag_run = context["dag_run"]
    drift = [e for e in asset_events(context) if e.get("kind") == "drift"]
    if drift:
        # A drift-triggered run covers the data up to the drifted window, not the events' wall-clock times.
        latest = max(drift, key=lambda e: str(e["window_end"]))
        drifted_until = _utc(datetime.fromisoformat(str(latest["window_end"])))
        return RunContext(
            dag_run.dag_id,
            dag_run.run_id,
            "",
            drifted_until - timedelta(hours=1),
            drifted_until,
            "airflow:drift",
            dict(context.get("params") or {}),
            latest,
        )
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None:
        raise AirflowFailException("this task needs a data interval; trigger the DAG with a logical date")
    logical = context.get("logical_date")
    return RunContext(
        dag_run.dag_id,
        dag_run.run_id,
        logical.isoformat() if logical else "",
        _utc(start),
        _utc(end),
        run_actor(dag_run),
        dict(context.get("params") or {}),
        None,
    )


def run_trigger(ctx: RunContext) -> str:
    """What started a run, for lineage: drift, the schedule, or a person."""
    if ctx.drift:
        return "drift"
    return "schedule" if ctx.actor == "airflow:scheduler" else f"manual ({ctx.actor})"


@contextmanager
def permanent_failures() -> Iterator[None]:
    """Errors a retry cannot fix (bad data, broken contract, missing champion) fail the task at once."""
    from pipelines.features import ContractError
    from pipelines.lake import LakeError
    from pipelines.promotion import StaleDecision
    from pipelines.registry import RegistrationError
    from pipelines.score import NoChampionError
    from pipelines.train import NotEnoughDataError
    from pipelines.validate import ValidationFailed

    try:
        yield
    except (
        ValidationFailed,
        ContractError,
        LakeError,
        NoChampionError,
        NotEnoughDataError,
        RegistrationError,
        StaleDecision,
        ValueError,
    ) as exc:
        raise AirflowFailException(str(exc)) from exc


def _connection(conn_id: str) -> Any:
    """The Airflow connection's fields, or None when no connection by that id is defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from pipelines.config import ConnectionFields

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return ConnectionFields(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=conn.host,
        port=conn.port,
        login=conn.login,
        password=conn.password,
        schema=conn.schema,
        extra=conn.extra_dejson,
    )


def _settings() -> Any:
    """Settings for a task: tables and lake credentials from Airflow connections where defined.

    `pipelines_tables` (postgres) gives the tables URL; `pipelines_lake` (aws) gives the S3 or
    MinIO credentials and endpoint for an `s3://` PIPELINES_LAKE. Without them, the embedded
    defaults apply (SQLite file, local folder).
    """
    from pipelines.config import LAKE_CONN_ID, TABLES_CONN_ID, get_settings, with_connections

    settings = get_settings()
    lake_conn = _connection(LAKE_CONN_ID) if settings.lake.uri.startswith("s3://") else None
    return with_connections(settings, _connection(TABLES_CONN_ID), lake_conn)


def _engine(settings: Any = None) -> Any:
    from pipelines.tables import SchemaError, make_engine

    try:
        return make_engine((settings or _settings()).tables_url)
    except SchemaError as exc:  # a retry cannot migrate the tables: say what to run, once
        raise AirflowFailException(str(exc)) from exc


def _ingest(spec: ModelSpec, start: datetime, end: datetime) -> dict[str, Any]:
    from pipelines.ingest import ingest, snapshot_sha256, write_snapshot_manifest

    settings = _settings()
    staged = ingest(spec, settings.source, settings.lake, start, end)
    return {
        "partitions": len(staged),
        "rows": sum(int(d["rows"]) for d in staged),
        "data_sha256": snapshot_sha256(staged),
        "data_uri": write_snapshot_manifest(spec, settings.lake, start, end, staged),
        "staged": staged,  # validated, then published, by the next task
    }


def _validate(spec: ModelSpec, ctx: RunContext, start: datetime, ingested: dict[str, Any]) -> dict[str, Any]:
    from pipelines.validate import validate_and_publish

    settings = _settings()
    outcome = validate_and_publish(
        spec, settings, _engine(settings), ingested["staged"], start, ctx.end, ctx.dag_id, ctx.run_id
    )
    return {
        "suite": spec.suite,
        "suite_sha256": outcome.suite_sha256,
        "success": outcome.success,
        "result_uri": outcome.result_uri,
        "data_docs": outcome.data_docs_path,
        "rows_checked": outcome.rows_checked,
        "rows_quarantined": outcome.rows_quarantined,
    }


def _ingest_labels(spec: ModelSpec, start: datetime, end: datetime) -> dict[str, Any]:
    from pipelines.labels import ingest_labels

    settings = _settings()
    result = ingest_labels(spec, settings.source, _engine(settings), start, end)
    return {"files_read": result.files_read, "rows": result.rows, "missing_hours": len(result.missing_hours)}


def _common_args(spec: ModelSpec, kind: str, doc: str) -> dict[str, Any]:
    return {
        "dag_id": f"{spec.name}__{kind}",
        "start_date": spec.start_date,
        "catchup": False,
        "tags": ["pipelines", f"model:{spec.name}", kind],
        "doc_md": f"### {spec.name} · {kind}\n\n{spec.description}\n\n{doc}\n\nSpec: `dags/models/{spec.name}.yaml`.",
        "default_args": {"owner": spec.owner, "retries": DEFAULT_RETRIES, "retry_delay": DEFAULT_RETRY_DELAY},
        "max_active_runs": 1,
    }


def predictions_asset(spec: ModelSpec) -> Asset:
    return Asset(name=f"{spec.name}__predictions", uri=f"pipelines://{spec.name}/predictions")


TRAIN_PARAMS = {
    "xgboost_params": Param(
        {},
        type="object",
        description="XGBoost parameters merged over the spec's training.params for this run only",
    ),
    "num_boost_round": Param(
        None, type=["null", "integer"], minimum=1, description="Override training.num_boost_round for this run"
    ),
    "dry_run": Param(False, type="boolean", description="Decide and record the gate's verdict, but move no alias"),
    "require_approval": Param(
        False,
        type="boolean",
        description="Ask a human in the UI before promoting (always so when the spec's gate.mode is manual)",
    ),
}


def train_dag(spec: ModelSpec) -> DAG:
    gate = spec.gate
    with DAG(
        # Nightly, or as soon as the monitor finds persistent drift.
        schedule=AssetOrTimeSchedule(
            timetable=CronDataIntervalTimetable(spec.schedules.train, timezone="UTC"), assets=drift_asset(spec)
        ),
        params=TRAIN_PARAMS,
        **_common_args(
            spec,
            "train",
            (
                f"Nightly, or when `{spec.name}__monitor` emits `{spec.name}__drift` (persistent drift; the MLflow "
                f"run is then tagged trigger=drift with the reason and report): ingest and validate the last "
                f"{spec.training.window_days} day(s), train XGBoost "
                "(CUDA when usable), log to MLflow with lineage, register the version as `challenger`, then the "
                f"gate (mode `{gate.mode}`): challenger and champion are scored on the challenger's fresh "
                f"holdout, and `champion` moves only when the {gate.confidence:.0%} bootstrap interval of the "
                f"{gate.metric} improvement clears {gate.min_improvement} and no slice of {gate.slices or '[]'} "
                f"regresses by more than {gate.slice_tolerance}. The decision is in `gate/decision.json` of the "
                "challenger's run, in the version's `gate.*` tags and in `model_events`. Trigger with "
                "`dry_run` to see the verdict without moving anything."
            ),
        ),
    ) as dag:

        @task
        def ingest_window() -> dict[str, Any]:
            ctx = run_context()
            return _ingest(spec, *spec.training_window(ctx.end))

        @task
        def validate_window(ingested: dict[str, Any]) -> dict[str, Any]:
            ctx = run_context()
            with permanent_failures():
                return _validate(spec, ctx, spec.training_window(ctx.end)[0], ingested)

        @task
        def ingest_labels_window() -> dict[str, Any]:
            ctx = run_context()
            return _ingest_labels(spec, *spec.training_window(ctx.end))

        @task
        def train(ingested: dict[str, Any], validated: dict[str, Any], labelled: dict[str, Any]) -> dict[str, Any]:
            from pipelines.config import git_sha
            from pipelines.train import assemble_training_set, previous_training, train_model

            ctx = run_context()
            settings = _settings()
            start, end = spec.training_window(ctx.end)
            with permanent_failures():
                result = previous_training(settings, spec, ctx.dag_id, ctx.run_id)
                if result is None:
                    frame = assemble_training_set(spec, settings.lake, _engine(settings), start, end)
                    tags = {
                        "run_name": f"{ctx.dag_id} {ctx.end:%Y-%m-%dT%H:%M}",
                        "dag_id": ctx.dag_id,
                        "dag_run_id": ctx.run_id,
                        "logical_date": ctx.logical_date,
                        "window_start": start.isoformat(),
                        "window_end": end.isoformat(),
                        "data_uri": ingested["data_uri"],
                        "data_sha256": ingested["data_sha256"],
                        "suite": validated["suite"],
                        "suite_sha256": validated["suite_sha256"],
                        "validation_result": validated["result_uri"],
                        "git_sha": git_sha(),
                        "labels_rows": str(labelled["rows"]),
                        "trigger": run_trigger(ctx),
                    }
                    if ctx.drift:  # the drift policy asked for this training: say why, and where the report is
                        tags |= {
                            "drift_reason": str(ctx.drift["reason"]),
                            "drift_report": str(ctx.drift["report"]),
                            "drift_window_end": str(ctx.drift["window_end"]),
                        }
                    result = train_model(spec, frame, settings, tags, ctx.params)
            return {
                "run_id": result.run_id,
                "model_uri": result.model_uri,
                "device": result.device,
                "metrics": result.metrics,
                "rows": result.rows,
                "lineage": result.lineage,
            }

        @task
        def register(trained: dict[str, Any]) -> str:
            from pipelines.promotion import register_challenger

            ctx = run_context()
            settings = _settings()
            with permanent_failures():
                return register_challenger(
                    spec,
                    settings,
                    _engine(settings),
                    trained["run_id"],
                    trained["model_uri"],
                    trained["lineage"],
                    ctx.run_id,
                    ctx.actor,
                )

        @task(task_id="gate")
        def gate_task(version: str) -> dict[str, Any]:
            from pipelines.promotion import gate_challenger

            ctx = run_context()
            settings = _settings()
            with permanent_failures():
                return gate_challenger(
                    spec,
                    settings,
                    _engine(settings),
                    version,
                    ctx.dag_id,
                    ctx.run_id,
                    ctx.actor,
                    dry_run=bool(ctx.params.get("dry_run")),
                    require_approval=bool(ctx.params.get("require_approval")),
                )

        # Runs after an approval, and also when the approval was skipped (no human needed or asked).
        @task(trigger_rule="none_failed")
        def promote(decision: dict[str, Any]) -> str:
            from pipelines.promotion import apply_decision

            ctx = run_context()
            settings = _settings()
            approval = get_current_context()["ti"].xcom_pull(task_ids="approve")
            with permanent_failures():
                return apply_decision(settings, _engine(settings), decision, approval, ctx.run_id, ctx.actor)

        # TaskFlow wiring passes XComArgs where the functions take dicts; Airflow resolves them at run time.
        ingested = ingest_window()
        trained = train(ingested, validate_window(ingested), ingest_labels_window())  # type: ignore[arg-type]
        decision = gate_task(register(trained))  # type: ignore[arg-type]
        awaits_approval(decision) >> approval_task(spec) >> promote(decision)  # type: ignore[arg-type]
    return dag


@task.short_circuit(ignore_downstream_trigger_rules=False)
def awaits_approval(decision: dict[str, Any]) -> bool:
    """Only a passing verdict asks a human; otherwise the approval task is skipped."""
    return bool(decision["action"] == "await_approval")


def approval_task(spec: ModelSpec) -> HITLOperator:
    from pipelines.registry import APPROVE, KEEP

    return HITLOperator(
        task_id="approve",
        subject=f"Promote {spec.name} v{{{{ ti.xcom_pull(task_ids='gate')['challenger_version'] }}}} to champion?",
        body=(
            "The gate's verdict: **{{ ti.xcom_pull(task_ids='gate')['verdict'] }}**\n\n"
            "{{ ti.xcom_pull(task_ids='gate')['reason'] }}\n\n"
            "Current champion: v{{ ti.xcom_pull(task_ids='gate')['champion_version'] }}. "
            "The full record is `gate/decision.json` in MLflow run "
            "`{{ ti.xcom_pull(task_ids='gate')['challenger_run_id'] }}`."
        ),
        options=[APPROVE, KEEP],
        defaults=[KEEP],
        response_timeout=timedelta(days=3),  # then the default (keep the champion) is taken
    )


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
    with DAG(
        schedule=CronDataIntervalTimetable(spec.schedules.score, timezone="UTC"),
        params=SCORE_PARAMS,
        **_common_args(
            spec,
            "score",
            (
                "Hourly: stage the interval, validate it and publish it, check it against the champion's signature, "
                "score it with `models:/<name>@champion` (an hour scored before: with the version that served it, "
                "unless the `rescore_with` param says otherwise), keep the scored inputs in the lake, append the predictions "
                f"to the log. Emits the `{spec.name}__predictions` Asset, which runs `{spec.name}__monitor`."
            ),
        ),
    ) as dag:

        @task
        def ingest_interval() -> dict[str, Any]:
            ctx = run_context()
            return _ingest(spec, ctx.start, ctx.end)

        @task
        def validate_interval(ingested: dict[str, Any]) -> dict[str, Any]:
            ctx = run_context()
            with permanent_failures():
                return _validate(spec, ctx, ctx.start, ingested)

        @task(outlets=[predictions_asset(spec)])
        def score(validated: dict[str, Any]) -> dict[str, Any]:
            from pipelines.score import score_interval

            ctx = run_context()
            settings = _settings()
            with permanent_failures():
                result = score_interval(
                    spec,
                    settings,
                    _engine(settings),
                    ctx.start,
                    ctx.end,
                    ctx.run_id,
                    rescore_with=str(ctx.params["rescore_with"]).strip() if ctx.params.get("rescore_with") else None,
                )
            # The monitor DAG runs on this event and reads which interval to watch from it.
            get_current_context()["outlet_events"][predictions_asset(spec)].extra = {
                "kind": "predictions",
                "interval_start": ctx.start.isoformat(),
                "interval_end": ctx.end.isoformat(),
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

        score(validate_interval(ingest_interval()))  # type: ignore[arg-type]
    return dag


def drift_asset(spec: ModelSpec) -> Asset:
    return Asset(name=f"{spec.name}__drift", uri=f"pipelines://{spec.name}/drift")


MONITOR_PARAMS = {
    "interval_start": Param(
        None,
        type=["null", "string"],
        format="date-time",
        description="Manual runs: the scored interval to monitor (runs triggered by scoring read it from the event)",
    ),
    "interval_end": Param(None, type=["null", "string"], format="date-time", description="Its end"),
}


def monitored_intervals(context: Any) -> list[tuple[datetime, datetime]]:
    """The scored intervals this run watches: from the triggering predictions events, else from the params."""
    events = [e for e in asset_events(context) if e.get("kind") == "predictions"]
    if events:
        pairs = {(str(e["interval_start"]), str(e["interval_end"])) for e in events}
    else:
        params = context.get("params") or {}
        if not params.get("interval_start") or not params.get("interval_end"):
            raise AirflowFailException("no predictions event triggered this run: give interval_start and interval_end")
        pairs = {(str(params["interval_start"]), str(params["interval_end"]))}
    return sorted((_utc(datetime.fromisoformat(a)), _utc(datetime.fromisoformat(b))) for a, b in pairs)


def monitor_dag(spec: ModelSpec) -> DAG:
    policy = spec.drift
    with DAG(
        schedule=[predictions_asset(spec)],
        params=MONITOR_PARAMS,
        **_common_args(
            spec,
            "monitor",
            (
                f"Runs on each `{spec.name}__predictions` event: an Evidently drift report (DataDriftPreset, and "
                "prediction drift on the model's score) of the scored interval against the reference sample "
                f"stored with the serving version, sampled to {policy.max_current_rows} rows; the HTML goes to the "
                "lake, per-column results to `drift_metrics`. A window drifted when at least "
                f"{policy.drift_share:.0%} of the feature columns did. When {policy.drifted_windows} of the last "
                f"{policy.windows} windows drifted and no retraining happened in the last {policy.cooldown_hours} h, "
                f"`request_retraining` emits `{spec.name}__drift`, which runs `{spec.name}__train`."
            ),
        ),
    ) as dag:

        @task
        def drift_report() -> list[dict[str, Any]]:
            from pipelines.drift import monitor_interval

            context = get_current_context()
            settings = _settings()
            engine = _engine(settings)
            reports = []
            for start, end in monitored_intervals(context):
                with permanent_failures():
                    summary = monitor_interval(spec, settings, engine, start, end, context["dag_run"].run_id)
                log.info(
                    "DRIFT report %s: %d of %d feature columns drifted (%s), prediction drift %s",
                    summary.report_path,
                    len(summary.drifted_columns),
                    len(summary.features),
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

        @task.short_circuit
        def drift_persists(reports: list[dict[str, Any]]) -> bool:
            from pipelines.drift_policy import evaluate

            settings = _settings()
            window_end = max(datetime.fromisoformat(r["interval_end"]) for r in reports)
            verdict = evaluate(spec, settings, _engine(settings), window_end)
            log.info("DRIFT policy at %s: %s", verdict.window_end, verdict.reason)
            return verdict.retrain

        @task(outlets=[drift_asset(spec)])
        def request_retraining(reports: list[dict[str, Any]]) -> dict[str, Any]:
            from pipelines.drift_policy import record_trigger, stored_verdict

            context = get_current_context()
            settings = _settings()
            engine = _engine(settings)
            window_end = max(datetime.fromisoformat(r["interval_end"]) for r in reports)
            request = record_trigger(
                engine,
                spec.name,
                stored_verdict(engine, spec.name, window_end),
                context["dag_run"].run_id,
                run_actor(context["dag_run"]),
            )
            context["outlet_events"][drift_asset(spec)].extra = {**request, "kind": "drift"}
            log.info("DRIFT retraining requested: %s (report %s)", request["reason"], request["report"])
            return request

        reports = drift_report()
        drift_persists(reports) >> request_retraining(reports)  # type: ignore[arg-type]
    return dag


def backtest_dag(spec: ModelSpec) -> DAG:
    with DAG(
        schedule=CronDataIntervalTimetable(spec.schedules.backtest, timezone="UTC"),
        **_common_args(
            spec,
            "backtest",
            (
                f"Daily: ingest the labels that arrived in the interval, then join the logged predictions of "
                f"the last {spec.backtest.lookback_days} day(s) with labels whose {spec.label.delay_hours} h "
                "delay has passed; metrics per cohort (as_of date) x model version x slice of "
                f"{spec.backtest.slices or '[]'} into `backtest_metrics`, a plot in the lake and an MLflow run. "
                f"A challenger that is not serving replays the logged inputs of the last "
                f"{spec.backtest.replay_intervals} matured hours; its rows have scored_by = replay."
            ),
        ),
    ) as dag:

        @task
        def ingest_labels() -> dict[str, Any]:
            ctx = run_context()
            return _ingest_labels(spec, ctx.start, ctx.end)

        @task
        def backtest(labelled: dict[str, Any]) -> dict[str, Any]:
            from pipelines.backtest import backtest as run_backtest
            from pipelines.registry import CHALLENGER, alias_version, champion_version

            ctx = run_context()
            settings = _settings()
            challenger = alias_version(settings, spec.name, CHALLENGER)
            if challenger == champion_version(settings, spec.name):
                challenger = None  # already serving: its logged scores are its backtest
            with permanent_failures():
                result = run_backtest(spec, settings, _engine(settings), ctx.end, ctx.run_id, challenger)
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

        backtest(ingest_labels())  # type: ignore[arg-type]
    return dag


def rollback_dag(spec: ModelSpec) -> DAG:
    args = _common_args(
        spec,
        "rollback",
        (
            "Manual: move `champion` back to the version given in the `version` param, after checking that it "
            "exists, is READY, its run still exists and it loads with the xgboost flavor. A wrong version fails "
            "the run and changes nothing. The move is logged in `model_events` like any other "
            "(`pipelines history <model>`). Same as `pipelines rollback <model> <version>`."
        ),
    )
    args["default_args"] = {**args["default_args"], "retries": 0}  # a wrong version stays wrong
    with DAG(
        schedule=None,
        params={
            "version": Param(type="string", minLength=1, description="The registered version to serve"),
            "reason": Param("manual rollback", type="string", minLength=1, description="Why, for the history"),
        },
        **args,
    ) as dag:

        @task
        def rollback() -> dict[str, Any]:
            from pipelines.registry import VersionNotServable
            from pipelines.registry import rollback as roll_back

            context = get_current_context()  # no data interval: a rollback is not about one
            settings = _settings()
            dag_run, params = context["dag_run"], context["params"]
            version, reason = str(params["version"]).strip(), str(params["reason"])
            try:
                moved = roll_back(
                    settings, _engine(settings), spec.name, version, reason, dag_run.run_id, run_actor(dag_run)
                )
            except VersionNotServable as exc:
                raise AirflowFailException(f"rollback refused, champion unchanged: {exc}") from exc
            return {"champion": version, "moved": moved}

        rollback()
    return dag


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
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.config import REPO_ROOT

    bag = DagBag(REPO_ROOT / "dags")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise LookupError(f"DAG {dag_id} not found; import errors: {bag.import_errors or 'none'}")
    return dag.test(logical_date=logical_date, run_after=run_after or logical_date, run_conf=run_conf)
