"""What every task of every model's DAGs shares: its run context, its storage and one wrapper.

`pipeline_task` is the only place where a task meets Airflow: it builds the task's `TaskEnv`
(run context, settings from the Airflow connections, tables engine), runs the stage function,
logs one outcome line, and maps errors to Airflow's retry policy: a permanent error fails the task
at once, only a transient one is retried (pipelines/core/errors.py).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from airflow.sdk import Asset, get_current_context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pipelines.airflow.connections import task_connection, task_settings
from pipelines.core.errors import PermanentError, PipelineError, is_transient, machine_fault
from pipelines.core.spec import ModelSpec

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pipelines.storage.settings import Settings
    from pipelines.storage.sources import SourceAccess

log = logging.getLogger(__name__)


def task_retries() -> int:
    """Retries for transient trouble (a late source file, a busy database). Read when a DAG is built:
    the demo and tests set PIPELINES_TASK_RETRIES=0, since dag.test() sits out each retry delay."""
    return int(os.environ.get("PIPELINES_TASK_RETRIES", "2"))


def task_retry_delay() -> timedelta:
    return timedelta(seconds=float(os.environ.get("PIPELINES_TASK_RETRY_DELAY_S", "300")))


def source_wait(spec: ModelSpec) -> tuple[float, float]:
    """(allowed delay past an interval's end, poke interval) in seconds, read when a DAG is built.
    PIPELINES_SOURCE_WAIT_S overrides every spec's delay (tests and demo stacks whose clock is far
    past their data, where the scheduler's run for "now" should fail at once, not wait)."""
    delay = float(os.environ.get("PIPELINES_SOURCE_WAIT_S", spec.source.wait_timeout_minutes * 60))
    return delay, min(spec.source.poke_interval_seconds, max(delay / 2, 1.0))


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    task_id: str
    run_id: str
    logical_date: str
    start: datetime | None  # the data interval; None for runs that are not about one (rollback)
    end: datetime | None
    actor: str  # who made this run happen, for the model_events log
    params: dict[str, Any]
    drift: dict[str, Any] | None  # the drift policy's request, when drift triggered this run
    triggering_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def interval(self) -> tuple[datetime, datetime]:
        if self.start is None or self.end is None:
            raise PermanentError(f"{self.dag_id}: this task needs a data interval; trigger it with a logical date")
        return self.start, self.end

    @property
    def trigger(self) -> str:
        """What started the run, for lineage: drift, the schedule, or a person."""
        if self.drift:
            return "drift"
        return "schedule" if self.actor == "airflow:scheduler" else f"manual ({self.actor})"


def as_utc(value: Any) -> datetime:
    """A datetime (or a pendulum one, or an ISO text) in UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return datetime.fromtimestamp(value.timestamp(), tz=UTC)


def run_actor(dag_run: Any) -> str:
    user = getattr(dag_run, "triggering_user_name", None)
    return f"airflow:{user}" if user else "airflow:scheduler"


def asset_events(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The extras of the Asset events that triggered this run (none for scheduled or manual runs)."""
    events = context.get("triggering_asset_events") or {}
    return [dict(event.extra or {}) for _, asset_events_ in events.items() for event in asset_events_]


def run_context(context: Mapping[str, Any]) -> RunContext:
    dag_run = context["dag_run"]
    events = asset_events(context)
    params = dict(context.get("params") or {})
    common = {
        "dag_id": dag_run.dag_id,
        "task_id": context["ti"].task_id,
        "run_id": dag_run.run_id,
        "params": params,
        "triggering_events": events,
    }
    drift = [e for e in events if e.get("kind") == "drift"]
    if drift:
        # A drift-triggered run covers the data up to the drifted window, not the events' wall-clock times.
        latest = max(drift, key=lambda e: str(e["window_end"]))
        drifted_until = as_utc(str(latest["window_end"]))
        return RunContext(
            **common,
            logical_date="",
            start=drifted_until - timedelta(hours=1),
            end=drifted_until,
            actor="airflow:drift",
            drift=latest,
        )
    start, end, logical = (
        context.get("data_interval_start"),
        context.get("data_interval_end"),
        context.get("logical_date"),
    )
    return RunContext(
        **common,
        logical_date=logical.isoformat() if logical else "",
        start=as_utc(start) if start is not None else None,
        end=as_utc(end) if end is not None else None,
        actor=run_actor(dag_run),
        drift=None,
    )


@dataclass
class TaskEnv:
    """One task's run context and storage: tables and lake credentials from the Airflow connections
    `pipelines_tables` (postgres) and `pipelines_lake` (aws) where defined, else the embedded defaults."""

    spec: ModelSpec
    ctx: RunContext
    settings: Settings
    _engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        from pipelines.storage.database import make_engine

        if self._engine is None:
            self._engine = make_engine(self.settings.tables_url)
        return self._engine

    @property
    def sources(self) -> SourceAccess:
        """The model's sources: files under PIPELINES_SOURCE or S3, databases by Airflow connection."""
        from pipelines.storage.sources import SourceAccess

        return SourceAccess(self.settings.source, task_connection)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def fail_or_retry(exc: Exception, tables: str | None = None) -> BaseException:
    """What a task raises for an error: Airflow retries the error itself, or fails at once on AirflowFailException.
    `tables`: the tables' URL, for a database error to name."""
    if isinstance(exc, AirflowException) or is_transient(exc):
        return exc
    if isinstance(exc, PipelineError):
        return AirflowFailException(str(exc))
    fault = machine_fault(exc, tables)
    if fault is not None:
        return AirflowFailException(f"{fault}: free space or fix permissions, then clear this task (not retried)")
    # Not ours and not a connection error: a retry would run the same code on the same input.
    return AirflowFailException(f"unexpected {type(exc).__name__}: {exc} (not retried; please report it with this log)")


def failure_verdict(exc: Exception, raised: BaseException, ti: Any) -> str:
    """What happens next, for the outcome line: a transient error is retried while tries remain."""
    if raised is not exc or not is_transient(exc):
        return "failed, not retried"
    tries = int(getattr(ti, "max_tries", 0)) + 1
    if int(ti.try_number) < tries:
        return f"failed (transient), will be retried: try {ti.try_number} of {tries}"
    return f"failed (transient) on its last try, {ti.try_number} of {tries}"


def outcome_line(result: Any) -> str:
    """The scalar fields of a task's result, for its one outcome line."""
    if isinstance(result, Mapping):
        fields = {k: v for k, v in result.items() if isinstance(v, str | int | float | bool) or v is None}
        return ", ".join(f"{k}={v}" for k, v in fields.items()) or "done"
    if isinstance(result, list):
        return f"{len(result)} item(s)"
    return str(result)


P = ParamSpec("P")
R = TypeVar("R")


def pipeline_task(spec: ModelSpec) -> Callable[[Callable[Concatenate[TaskEnv, P], R]], Callable[P, R]]:
    """Wrap a task function that takes a TaskEnv first: Airflow sees (and passes) only the other arguments."""

    def decorate(function: Callable[Concatenate[TaskEnv, P], R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            context = get_current_context()
            ti = context["ti"]
            where = f"{ti.dag_id}.{ti.task_id}"
            started = time.perf_counter()
            env: TaskEnv | None = None
            try:
                ctx = run_context(context)
                if ctx.start is not None and ctx.end is not None:
                    where += f" [{ctx.start:%Y-%m-%dT%H:%M}, {ctx.end:%Y-%m-%dT%H:%M})"
                env = TaskEnv(spec, ctx, task_settings())
                result = function(env, *args, **kwargs)
            except AirflowException:
                raise  # Airflow's own control flow (skip, fail, defer), as raised
            except Exception as exc:
                raised = fail_or_retry(exc, None if env is None else env.settings.tables_url)
                verdict = failure_verdict(exc, raised, ti)
                log.error("OUTCOME %s %s after %.1fs: %s", where, verdict, time.perf_counter() - started, exc)
                if raised is exc:
                    raise
                raise raised from exc
            finally:
                if env is not None:
                    env.close()
            log.info("OUTCOME %s succeeded in %.1fs: %s", where, time.perf_counter() - started, outcome_line(result))
            return result

        # Airflow binds a task's arguments to its signature: hide the TaskEnv the wrapper supplies.
        signature = inspect.signature(function)
        run.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]
        return run

    return decorate


def common_dag_args(spec: ModelSpec, kind: str, doc: str) -> dict[str, Any]:
    return {
        "dag_id": f"{spec.name}__{kind}",
        "start_date": spec.start_date,
        "catchup": False,
        "tags": ["pipelines", f"model:{spec.name}", kind],
        "doc_md": f"### {spec.name} · {kind}\n\n{spec.description}\n\n{doc}\n\nSpec: `dags/models/{spec.name}.yaml`.",
        "default_args": {"owner": spec.owner, "retries": task_retries(), "retry_delay": task_retry_delay()},
        "max_active_runs": 1,
    }


def predictions_asset(spec: ModelSpec) -> Asset:
    return Asset(name=f"{spec.name}__predictions", uri=f"pipelines://{spec.name}/predictions")


def drift_asset(spec: ModelSpec) -> Asset:
    return Asset(name=f"{spec.name}__drift", uri=f"pipelines://{spec.name}/drift")
