"""The train DAG: ingest and validate the training window, train, register, gate, promote."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypedDict

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, AssetOrTimeSchedule, CronDataIntervalTimetable, Param, get_current_context, task

from pipelines.airflow.context import TaskEnv, common_dag_args, drift_asset, pipeline_task
from pipelines.airflow.ingest import Ingested, Labelled, Validated, ingest, ingest_labels, validate, wait_for_source
from pipelines.core.spec import ModelSpec


class Trained(TypedDict):
    run_id: str
    model_uri: str
    device: str
    metrics: dict[str, float]
    rows: dict[str, int]
    lineage: dict[str, Any]


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


def airflow_run_url(dag_id: str, run_id: str) -> str | None:
    """The run's page in the Airflow UI, when Airflow knows its own address ([api] base_url)."""
    from urllib.parse import quote

    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback="")
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}" if base_url else None


def lineage_tags(env: TaskEnv, ingested: Ingested, validated: Validated, labelled: Labelled) -> dict[str, str]:
    """The MLflow run's tags that trace a model back to its data, suite, code and trigger."""
    from pipelines.storage.settings import get_settings, project_commit

    ctx = env.ctx
    start, end = env.spec.training_window(ctx.interval[1])
    tags = {
        "run_name": f"{ctx.dag_id} {end:%Y-%m-%dT%H:%M}",
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
        "git_sha": project_commit(get_settings().project),
        "labels_rows": str(labelled["rows"]),
        "trigger": ctx.trigger,
    }
    if run_url := airflow_run_url(ctx.dag_id, ctx.run_id):  # the registered version links back to its run
        tags["airflow_run_url"] = run_url
    if ctx.drift:  # the drift policy asked for this training: say why, and where the report is
        tags |= {
            "drift_reason": str(ctx.drift["reason"]),
            "drift_report": str(ctx.drift["report"]),
            "drift_window_end": str(ctx.drift["window_end"]),
        }
    return tags


def approval_task(spec: ModelSpec, decision: str = "ti.xcom_pull(task_ids='gate')") -> HITLOperator:
    """The human's say on a passing verdict in manual mode; `decision` is the Jinja expression of the
    gate's decision (the train DAG's `gate` task, or the backtest's second hearing)."""
    from pipelines.storage.registry import APPROVE, KEEP

    return HITLOperator(
        task_id="approve",
        subject=f"Promote {spec.name} v{{{{ {decision}['challenger_version'] }}}} to champion?",
        body=(
            f"The gate's verdict: **{{{{ {decision}['verdict'] }}}}**\n\n"
            f"{{{{ {decision}['reason'] }}}}\n\n"
            f"Current champion: v{{{{ {decision}['champion_version'] }}}}. "
            "The full record is under `gate/` in MLflow run "
            f"`{{{{ {decision}['challenger_run_id'] }}}}`."
        ),
        options=[APPROVE, KEEP],
        defaults=[KEEP],
        response_timeout=timedelta(days=3),  # then the default (keep the champion) is taken
    )


def train_dag(spec: ModelSpec) -> DAG:
    gate = spec.gate
    doc = (
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
    )
    with DAG(
        # Nightly, or as soon as the monitor finds persistent drift.
        schedule=AssetOrTimeSchedule(
            timetable=CronDataIntervalTimetable(spec.schedules.train, timezone="UTC"), assets=drift_asset(spec)
        ),
        params=TRAIN_PARAMS,
        **common_dag_args(spec, "train", doc),
    ) as dag:
        step = pipeline_task(spec)

        @task
        @step
        def ingest_window(env: TaskEnv) -> Ingested:
            return ingest(env, *spec.training_window(env.ctx.interval[1]))

        @task
        @step
        def validate_window(env: TaskEnv, ingested: Ingested) -> Validated:
            return validate(env, *spec.training_window(env.ctx.interval[1]), ingested)

        @task
        @step
        def ingest_labels_window(env: TaskEnv) -> Labelled:
            return ingest_labels(env, *spec.training_window(env.ctx.interval[1]))

        @task(queue=spec.training.queue)  # a GPU worker serves its own queue
        @step
        def train(env: TaskEnv, ingested: Ingested, validated: Validated, labelled: Labelled) -> Trained:
            from pipelines.stages.train import assemble_training_set, previous_training, train_model

            result = previous_training(env.settings, spec, env.ctx.dag_id, env.ctx.run_id)
            if result is None:
                start, end = spec.training_window(env.ctx.interval[1])
                frame = assemble_training_set(spec, env.settings.lake, env.engine, start, end)
                tags = lineage_tags(env, ingested, validated, labelled)
                result = train_model(spec, frame, env.settings, tags, env.ctx.params)
            return {
                "run_id": result.run_id,
                "model_uri": result.model_uri,
                "device": result.device,
                "metrics": result.metrics,
                "rows": result.rows,
                "lineage": result.lineage,
            }

        @task
        @step
        def register(env: TaskEnv, trained: Trained) -> str:
            from pipelines.stages.promotion import register_challenger

            ctx = env.ctx
            return register_challenger(
                spec, env.settings, env.engine, trained["run_id"], trained["model_uri"], lineage=trained["lineage"],
                dag_run_id=ctx.run_id, actor=ctx.actor,
            )  # fmt: skip

        @task(task_id="gate")
        @step
        def gate_task(env: TaskEnv, version: str) -> dict[str, Any]:
            from pipelines.stages.promotion import gate_challenger

            ctx = env.ctx
            return gate_challenger(
                spec, env.settings, env.engine, version, dag_id=ctx.dag_id, dag_run_id=ctx.run_id, actor=ctx.actor,
                dry_run=bool(ctx.params.get("dry_run")),
                require_approval=bool(ctx.params.get("require_approval")),
            ).record()  # as XCom carries it: JSON  # fmt: skip

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        @step
        def awaits_approval(env: TaskEnv, decision: dict[str, Any]) -> bool:
            """Only a passing verdict asks a human; otherwise the approval task is skipped."""
            return bool(decision["action"] == "await_approval")

        # Runs after an approval, and also when the approval was skipped (no human needed or asked).
        @task(trigger_rule="none_failed")
        @step
        def promote(env: TaskEnv, decision: dict[str, Any]) -> str:
            from pipelines.stages.gate import GateDecision
            from pipelines.stages.promotion import apply_decision

            approval = get_current_context()["ti"].xcom_pull(task_ids="approve")
            return apply_decision(
                env.settings, env.engine, GateDecision.model_validate(decision), approval=approval,
                dag_run_id=env.ctx.run_id, actor=env.ctx.actor,
            )  # fmt: skip

        # TaskFlow wiring passes XComArgs where the functions take dicts; Airflow resolves them at run time.
        ingested = ingest_window()
        wait_for_source(spec, lambda env: spec.training_window(env.ctx.interval[1])) >> ingested
        trained = train(ingested, validate_window(ingested), ingest_labels_window())  # type: ignore[arg-type]
        decision = gate_task(register(trained))  # type: ignore[arg-type]
        awaits_approval(decision) >> approval_task(spec) >> promote(decision)  # type: ignore[arg-type]
    return dag
