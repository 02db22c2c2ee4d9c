"""What the Models page shows of one model, read from the tables, the registry and the lake: who
serves and since when, the gate's decisions, the backtest per cohort and version, drift per
window, validation per interval, prediction volume; and which artifacts a task run wrote.

Every value here is plain JSON-able data; pipelines/airflow/ui.py renders it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy import Connection, Engine, func, select

from pipelines.core.spec import ModelSpec
from pipelines.stages.backtest import plot_key, plot_metric
from pipelines.storage import tables
from pipelines.storage.registry import CHALLENGER, CHAMPION, alias_version
from pipelines.storage.settings import Settings
from pipelines.views.status import iso_utc, newest_rows

WINDOWS = 48  # drift windows, validations and prediction runs shown


class Event(TypedDict):
    """One model_events row: an alias move, a gate decision, an approval, an adoption."""

    event: str
    alias: str | None
    from_version: str | None
    to_version: str | None
    reason: str
    dag_run_id: str | None
    actor: str
    at: str
    details: dict[str, Any] | None


class AliasHolder(TypedDict):
    version: str | None
    moved: Event | None  # the recorded move that put it there


class BacktestSeries(TypedDict):
    metric: str
    cohorts: list[Any]
    series: dict[str, list[dict[str, Any]]]  # "v<version> <scored_by>": [{cohort, n, value}]


class DriftWindow(TypedDict):
    interval_start: str
    interval_end: str
    model_version: str
    drift_share: float
    dataset_drift: bool
    drifted_columns: list[str]
    prediction_drift: bool | None
    verdict: dict[str, Any] | None
    report: str
    dag_run_id: str


class ValidationRow(TypedDict):
    dag_id: str
    dag_run_id: str
    interval_start: str
    interval_end: str
    success: bool
    failed_expectations: list[str]
    rows_checked: int | None
    rows_quarantined: int | None
    result: str
    quarantine: str | None


class ModelPage(TypedDict):
    model: str
    task: str
    description: str
    owner: str
    serving: dict[str, AliasHolder]  # by alias: champion, challenger
    history: list[Event]
    gate_decisions: list[Event]
    awaiting_approval: Event | None
    backtest: BacktestSeries
    drift: list[DriftWindow]
    validations: list[ValidationRow]
    volume: list[dict[str, Any]]  # {dag_run_id, from, rows}: `from` cannot be a TypedDict field name


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


def events(engine: Engine, model_name: str, kinds: tuple[str, ...], limit: int) -> list[Event]:
    """The newest events of these kinds, newest first."""
    e = tables.model_events
    return [
        Event(
            event=row["event"],
            alias=row["alias"],
            from_version=row["from_version"],
            to_version=row["to_version"],
            reason=row["reason"],
            dag_run_id=row["dag_run_id"],
            actor=row["actor"],
            at=iso_utc(row["at"]),
            details=json.loads(row["details"]) if row["details"] else None,
        )
        for row in newest_rows(engine, e, model_name, e.c.id, limit, e.c.event.in_(kinds))
    ]


def serving(settings: Settings, engine: Engine, model_name: str, history: list[Event]) -> dict[str, AliasHolder]:
    """Champion and challenger: the version each alias points at (the registry's word) and the
    recorded move that put it there (when, by whom, why)."""
    found: dict[str, AliasHolder] = {}
    for alias in (CHAMPION, CHALLENGER):
        version = alias_version(settings, model_name, alias)
        moved = next(
            (e for e in history if e["event"] == "alias_moved" and e["alias"] == alias and e["to_version"] == version),
            None,
        )
        found[alias] = {"version": version, "moved": moved}
    return found


def awaiting_approval(decisions: list[Event], approvals: list[Event]) -> Event | None:
    """The newest gate decision that waits for a human and has no approval or rejection yet."""
    answered = {(a["to_version"], a["dag_run_id"]) for a in approvals}
    for decision in decisions:
        details = decision["details"] or {}
        if (
            details.get("action") == "await_approval"
            and (decision["to_version"], decision["dag_run_id"]) not in answered
        ):
            return decision
    return None


def backtest_series(engine: Engine, spec: ModelSpec) -> BacktestSeries:
    """The plotted metric per cohort, one series per (version, logged or replayed), whole cohorts only."""
    b = tables.current_backtest(spec.name, slice_column="ALL")
    metric = plot_metric(spec)
    with engine.connect() as connection:
        rows = connection.execute(
            select(b.c.cohort, b.c.model_version, b.c.scored_by, b.c.n, b.c[metric]).order_by(b.c.cohort)
        ).all()
    series: dict[str, list[dict[str, Any]]] = {}
    for cohort, version, scored_by, n, value in rows:
        series.setdefault(f"v{version} {scored_by}", []).append({"cohort": cohort, "n": n, "value": value})
    return {"metric": metric, "cohorts": sorted({r[0] for r in rows}), "series": series}


def drift_timeline(engine: Engine, model_name: str, limit: int = WINDOWS) -> list[DriftWindow]:
    d = tables.drift_reports
    windows: list[DriftWindow] = [
        {
            "interval_start": iso_utc(r["interval_start"]),
            "interval_end": iso_utc(r["interval_end"]),
            "model_version": r["model_version"],
            "drift_share": r["drift_share"],
            "dataset_drift": bool(r["dataset_drift"]),
            "drifted_columns": json.loads(r["drifted_column_names"]),
            "prediction_drift": r["prediction_drift"],
            "verdict": json.loads(r["verdict"]) if r["verdict"] else None,
            "report": r["report_path"],
            "dag_run_id": r["dag_run_id"],
        }
        for r in newest_rows(engine, d, model_name, d.c.interval_end, limit)
    ]
    return windows[::-1]  # oldest first, as a timeline reads


def validations(engine: Engine, model_name: str, limit: int = WINDOWS) -> list[ValidationRow]:
    v = tables.validation_runs
    return [
        {
            "dag_id": r["dag_id"],
            "dag_run_id": r["dag_run_id"],
            "interval_start": iso_utc(r["interval_start"]),
            "interval_end": iso_utc(r["interval_end"]),
            "success": bool(r["success"]),
            "failed_expectations": json.loads(r["failed_expectations"]),
            "rows_checked": r["rows_checked"],
            "rows_quarantined": r["rows_quarantined"],
            "result": r["result_path"],
            "quarantine": r["quarantine_uri"],
        }
        for r in newest_rows(engine, v, model_name, v.c.validated_at, limit)
    ]


def prediction_volume(engine: Engine, model_name: str, span: timedelta = timedelta(days=2)) -> list[dict[str, Any]]:
    """Rows logged per DAG run over the span up to the newest prediction: a range read on the
    time-first key, however long the model has served."""
    p = tables.predictions
    with engine.connect() as connection:
        latest = connection.execute(select(func.max(p.c.as_of)).where(p.c.model_name == model_name)).scalar()
        if latest is None:
            return []
        rows = connection.execute(
            select(p.c.dag_run_id, func.min(p.c.as_of), func.count())
            .where(p.c.model_name == model_name, p.c.as_of > latest - span)
            .group_by(p.c.dag_run_id)
            .order_by(func.min(p.c.as_of))
        ).all()
    return [{"dag_run_id": run, "from": _iso(first), "rows": int(n)} for run, first, n in rows]


def model_page(settings: Settings, engine: Engine, spec: ModelSpec) -> ModelPage:
    history = events(engine, spec.name, ("alias_moved", "approval", "model_adopted"), 30)
    decisions = events(engine, spec.name, ("gate_decision",), 10)
    return {
        "model": spec.name,
        "task": spec.task,
        "description": spec.description,
        "owner": spec.owner,
        "serving": serving(settings, engine, spec.name, history),
        "history": history,
        "gate_decisions": decisions,
        "awaiting_approval": awaiting_approval(decisions, [e for e in history if e["event"] == "approval"]),
        "backtest": backtest_series(engine, spec),
        "drift": drift_timeline(engine, spec.name),
        "validations": validations(engine, spec.name),
        "volume": prediction_volume(engine, spec.name),
    }


Evidence = list[dict[str, str]]


def _validation_evidence(connection: Connection, settings: Settings, model: str, run: str) -> Evidence:
    v = tables.validation_runs
    found: Evidence = []
    for r in connection.execute(select(v).where(v.c.model_name == model, v.c.dag_run_id == run)).mappings():
        verdict = "passed" if r["success"] else "FAILED: " + "; ".join(json.loads(r["failed_expectations"]))
        found.append({"kind": "validation", "title": f"validation result ({verdict})", "uri": r["result_path"]})
        found.append({"kind": "data_docs", "title": "Data Docs", "uri": ""})
        if r["quarantine_uri"]:
            found.append({"kind": "artifact", "title": "quarantined rows", "uri": r["quarantine_uri"]})
    return found


def _drift_evidence(connection: Connection, settings: Settings, model: str, run: str) -> Evidence:
    d = tables.drift_reports
    found: Evidence = []
    for r in connection.execute(select(d).where(d.c.model_name == model, d.c.dag_run_id == run)).mappings():
        title = f"drift report up to {_iso(r['interval_end'])} ({r['drifted_columns']} of {r['columns']} drifted)"
        found.append({"kind": "artifact", "title": title, "uri": r["report_path"]})
    return found


def _quality_evidence(connection: Connection, settings: Settings, model: str, run: str) -> Evidence:
    q = tables.quality_reports
    rows = connection.execute(select(q).where(q.c.model_name == model, q.c.dag_run_id == run)).mappings()
    return [
        {"kind": "artifact", "title": "model quality report", "uri": r["report_path"]} for r in rows if r["report_path"]
    ]


def _decision_evidence(connection: Connection, settings: Settings, model: str, run: str) -> Evidence:
    e = tables.model_events
    found: Evidence = []
    decisions = select(e).where(e.c.model_name == model, e.c.dag_run_id == run, e.c.event == "gate_decision")
    for r in connection.execute(decisions).mappings():
        details = json.loads(r["details"]) if r["details"] else {}
        title = f"gate decision: v{r['to_version']} {details.get('action', '')}: {r['reason']}"
        found.append({"kind": "decision", "title": title, "uri": json.dumps(details, indent=2)})
        if details.get("challenger_run_id"):
            found.append(
                {"kind": "mlflow_run", "title": "challenger's MLflow run", "uri": details["challenger_run_id"]}
            )
    return found


def _backtest_evidence(connection: Connection, settings: Settings, model: str, run: str) -> Evidence:
    b = tables.backtest_metrics
    latest = select(func.max(b.c.labels_as_of)).where(b.c.model_name == model, b.c.dag_run_id == run)
    end = connection.execute(latest).scalar()
    if end is None:
        return []
    found = [{"kind": "artifact", "title": "backtest plot", "uri": settings.lake.uri_of(plot_key(model, end))}]
    if run_id := backtest_run_id(settings, model, run):
        found.append({"kind": "mlflow_run", "title": "backtest's MLflow run", "uri": run_id})
    return found


# What each evidence task (pipelines/core/dag_kinds.py: EVIDENCE_TASKS, task id prefixes such as
# validate_window) records, read back.
EVIDENCE_READERS: dict[str, Callable[[Connection, Settings, str, str], Evidence]] = {
    "validate": _validation_evidence,
    "drift_report": _drift_evidence,
    "quality_report": _quality_evidence,
    "gate": _decision_evidence,
    "approve": _decision_evidence,
    "promote": _decision_evidence,
    "backtest": _backtest_evidence,
}


def task_evidence(settings: Settings, engine: Engine, model_name: str, dag_run_id: str, task_id: str) -> Evidence:
    """What one task of one DAG run wrote: records of kind (artifact, validation, data_docs,
    decision, mlflow_run), a title, and a URI, an MLflow run id or the decision's JSON."""
    reader = next((read for prefix, read in EVIDENCE_READERS.items() if task_id.startswith(prefix)), None)
    if reader is None:
        return []
    with engine.connect() as connection:
        return reader(connection, settings, model_name, dag_run_id)


def backtest_run_id(settings: Settings, model_name: str, dag_run_id: str) -> str | None:
    from pipelines.storage.registry import mlflow_client
    from pipelines.storage.tracking import experiment_name

    if "'" in dag_run_id:  # it goes into an MLflow filter string; Airflow's own run ids hold none
        return None
    client = mlflow_client(settings)
    experiment = client.get_experiment_by_name(experiment_name(model_name))
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.backtest_dag_run_id = '{dag_run_id}'", max_results=1)
    return str(runs[0].info.run_id) if runs else None
