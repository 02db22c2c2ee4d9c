"""The rollback DAG: move `champion` back to a version a person names, after checking it can serve."""

from __future__ import annotations

from typing import TypedDict

from airflow.sdk import DAG, Param, task

from pipelines.airflow.context import TaskEnv, common_dag_args, pipeline_task
from pipelines.core.spec import ModelSpec


class RolledBack(TypedDict):
    champion: str
    moved: bool


def rollback_dag(spec: ModelSpec) -> DAG:
    doc = (
        "Manual: move `champion` back to the version given in the `version` param, after checking that it "
        "exists, is READY, its run still exists and its booster file is safe and as trained. A wrong version "
        "fails the run at once and changes nothing. The move is logged in `model_events` like any other "
        "(`pipelines history <model>`). Same as `pipelines rollback <model> <version>`."
    )
    with DAG(
        schedule=None,
        params={
            "version": Param(type="string", minLength=1, description="The registered version to serve"),
            "reason": Param("manual rollback", type="string", minLength=1, description="Why, for the history"),
        },
        **common_dag_args(spec, "rollback", doc),
    ) as dag:

        @task
        @pipeline_task(spec)
        def rollback(env: TaskEnv) -> RolledBack:
            from pipelines.storage.registry import rollback as roll_back

            version, reason = str(env.ctx.params["version"]).strip(), str(env.ctx.params["reason"])
            moved = roll_back(
                env.settings,
                env.engine,
                spec.name,
                spec.task,
                version,
                reason=reason,
                dag_run_id=env.ctx.run_id,
                actor=env.ctx.actor,
            )
            return {"champion": version, "moved": moved}

        rollback()
    return dag
