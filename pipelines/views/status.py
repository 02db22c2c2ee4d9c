"""What `pipelines status` reports per model: champion, recent rows, last validation, last drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy import Engine, case, func, select

from pipelines.core.errors import SpecError
from pipelines.core.metrics import TASK_METRICS
from pipelines.core.spec import ModelSpec, load_spec, spec_paths
from pipelines.core.tasks import Task
from pipelines.stages.drift_policy import DRIFT_TRIGGER
from pipelines.storage import tables
from pipelines.storage.registry import CHALLENGER, CHAMPION, alias_since, alias_version, mlflow_client
from pipelines.storage.settings import Settings

# The report `pipelines status` prints (and `--json` writes as is): one record per model that ran here.


class GateSummary(TypedDict):
    challenger_version: str | None
    champion_version: str | None
    action: str | None
    reason: str
    at: str


class ValidationSummary(TypedDict):
    dag_id: str
    interval_start: str
    interval_end: str
    success: bool
    failed_expectations: list[str]
    result_path: str


class QualitySummary(TypedDict):
    path: str | None
    interval_start: str
    interval_end: str
    model_version: str
    rows: int
    metrics: dict[str, Any]


class DriftSummary(TypedDict):
    path: str
    interval_end: str
    drift_share: float
    columns: int
    drifted_columns: list[str]
    prediction_drift: bool | None
    verdict: dict[str, Any] | None


class RetrainRequest(TypedDict):
    window_end: str
    reason: str


class SinceChampion(TypedDict):
    since: str | None  # the end of the champion's training window; None: no champion, from the start
    blocked_intervals: int
    latest_blocked: list[dict[str, Any]]
    drift_windows: int
    drifted_windows: int
    retrain_requests: int
    latest_retrain_request: RetrainRequest | None


class ModelStatus(TypedDict):
    model: str
    task: Task
    champion_version: str | None
    champion_since: str | None
    challenger_version: str | None
    champion_holdout: dict[str, Any]
    since_champion: SinceChampion
    last_gate_decision: GateSummary | None
    predictions_last_24h: int
    latest_prediction_as_of: str | None
    labels_last_24h: int
    backtest_metrics: int
    latest_backtest: list[dict[str, Any]]
    last_validation: ValidationSummary | None
    last_quality_report: QualitySummary | None
    last_drift_report: DriftSummary | None


class StatusReport(TypedDict):
    home: str
    storage: dict[str, str]
    models: list[ModelStatus]
    not_run_here: list[str]
    spec_errors: list[str]


def iso_utc(value: datetime) -> str:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def newest_rows(
    engine: Engine, table: Any, model_name: str, order_by: Any, limit: int, *where: Any
) -> list[dict[str, Any]]:
    """A model's newest rows of a table by `order_by`, newest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(table).where(table.c.model_name == model_name, *where).order_by(order_by.desc()).limit(limit)
        ).mappings()
        return [dict(row) for row in rows]


def _latest(engine: Engine, table: Any, model_name: str, order_by: Any, *where: Any) -> dict[str, Any] | None:
    rows = newest_rows(engine, table, model_name, order_by, 1, *where)
    return rows[0] if rows else None


RECENT = timedelta(hours=24)


def recent_rows(engine: Engine, table: Any, model_name: str) -> tuple[int, datetime | None]:
    """Rows of the 24 h up to the model's latest as_of, and that as_of: two range reads on the
    time-first key, where a count of every row would cost more the longer the model has served."""
    with engine.connect() as connection:
        latest = connection.execute(select(func.max(table.c.as_of)).where(table.c.model_name == model_name)).scalar()
        if latest is None:
            return 0, None
        count = connection.execute(
            select(func.count()).where(table.c.model_name == model_name, table.c.as_of > latest - RECENT)
        ).scalar_one()
    return int(count), latest


def model_status(settings: Settings, engine: Engine, spec: ModelSpec) -> ModelStatus:
    model_name = spec.name
    validation = _latest(engine, tables.validation_runs, model_name, tables.validation_runs.c.validated_at)
    drift = _latest(engine, tables.drift_reports, model_name, tables.drift_reports.c.interval_end)
    quality = _latest(engine, tables.quality_reports, model_name, tables.quality_reports.c.interval_end)
    b = tables.current_backtest(model_name, slice_column="ALL")
    columns = [b.c.cohort, b.c.model_version, b.c.scored_by, b.c.n, b.c.predictions, b.c.complete, b.c.labels_as_of]
    with engine.connect() as connection:
        backtest = [
            {**r, "labels_as_of": iso_utc(r["labels_as_of"])}
            for r in connection.execute(
                select(*columns, *[b.c[m] for m in TASK_METRICS[spec.task]])
                .order_by(b.c.cohort.desc(), b.c.scored_by, b.c.model_version)
                .limit(5)
            ).mappings()
        ]
    champion = alias_version(settings, model_name, CHAMPION)
    since = None if champion is None else alias_since(engine, model_name, CHAMPION, champion)
    holdout, trained_until = champion_record(settings, model_name, champion)
    events = tables.model_events
    predictions, latest_prediction = recent_rows(engine, tables.predictions, model_name)
    gate = _latest(engine, events, model_name, events.c.id, events.c.event == "gate_decision")
    return {
        "model": model_name,
        "task": spec.task,
        "champion_version": champion,
        "champion_since": None if since is None else iso_utc(since),
        "challenger_version": alias_version(settings, model_name, CHALLENGER),
        "champion_holdout": holdout,
        "since_champion": since_champion(engine, model_name, trained_until),
        "last_gate_decision": None
        if gate is None
        else {
            "challenger_version": gate["to_version"],
            "champion_version": gate["from_version"],
            "action": json.loads(gate["details"])["action"] if gate["details"] else None,
            "reason": gate["reason"],
            "at": iso_utc(gate["at"]),
        },
        "predictions_last_24h": predictions,
        "latest_prediction_as_of": None if latest_prediction is None else iso_utc(latest_prediction),
        "labels_last_24h": recent_rows(engine, tables.labels, model_name)[0],
        "backtest_metrics": tables.count_rows(engine, tables.backtest_metrics, model_name),
        "latest_backtest": backtest,
        "last_validation": None
        if validation is None
        else {
            "dag_id": validation["dag_id"],
            "interval_start": iso_utc(validation["interval_start"]),
            "interval_end": iso_utc(validation["interval_end"]),
            "success": validation["success"],
            "failed_expectations": json.loads(validation["failed_expectations"]),
            "result_path": validation["result_path"],
        },
        "last_quality_report": None
        if quality is None
        else {
            "path": quality["report_path"],
            "interval_start": iso_utc(quality["interval_start"]),
            "interval_end": iso_utc(quality["interval_end"]),
            "model_version": quality["model_version"],
            "rows": quality["rows"],
            "metrics": json.loads(quality["metrics"]),
        },
        "last_drift_report": None
        if drift is None
        else {
            "path": drift["report_path"],
            "interval_end": iso_utc(drift["interval_end"]),
            "drift_share": drift["drift_share"],
            "columns": drift["columns"],
            "drifted_columns": json.loads(drift["drifted_column_names"]),
            "prediction_drift": drift["prediction_drift"],
            "verdict": json.loads(drift["verdict"]) if drift["verdict"] else None,
        },
    }


def has_run(engine: Engine, model_name: str) -> bool:
    """Whether any task of the model has run in this home: a validation, a prediction or an event."""
    with engine.connect() as connection:
        return any(
            connection.execute(select(t.c.model_name).where(t.c.model_name == model_name).limit(1)).first()
            for t in (tables.validation_runs, tables.model_events, tables.predictions, tables.drift_reports)
        )


def champion_record(
    settings: Settings, model_name: str, version: str | None
) -> tuple[dict[str, float], datetime | None]:
    """The champion's own holdout metrics, as its training run logged them (what to read its live
    backtest against), and the end of its training window: the month's story starts there."""
    if version is None:
        return {}, None
    client = mlflow_client(settings)
    run = client.get_run(client.get_model_version(model_name, version).run_id)
    holdout = {
        k.removeprefix("holdout_"): float(v)
        for k, v in run.data.metrics.items()
        if k.startswith("holdout_") and "." not in k
    }
    window_end = run.data.tags.get("window_end")
    return holdout, datetime.fromisoformat(window_end) if window_end else None


def since_champion(engine: Engine, model_name: str, since: datetime | None) -> SinceChampion:
    """What happened to the data after the champion's training window (all of it, without one):
    blocked intervals, drift windows and retraining requests. Data time throughout, like the policy."""
    v, d, e = tables.validation_runs, tables.drift_reports, tables.model_events
    floor = since or datetime(1970, 1, 1, tzinfo=UTC)
    with engine.connect() as connection:
        blocked = connection.execute(
            select(v.c.interval_start, v.c.interval_end, v.c.failed_expectations)
            .where(v.c.model_name == model_name, v.c.success.is_(False), v.c.interval_end > floor)
            .order_by(v.c.interval_end.desc())
        ).all()
        windows = connection.execute(
            select(func.count(), func.coalesce(func.sum(case((d.c.dataset_drift, 1), else_=0)), 0)).where(
                d.c.model_name == model_name, d.c.interval_end > floor
            )
        ).one()
        triggers = connection.execute(
            select(e.c.reason, e.c.details).where(e.c.model_name == model_name, e.c.event == DRIFT_TRIGGER)
        ).all()
    requests = sorted(
        (
            (datetime.fromisoformat(json.loads(t.details)["window_end"]), t.reason)
            for t in triggers
            if t.details and "window_end" in json.loads(t.details)
        ),
        reverse=True,
    )
    requests = [r for r in requests if r[0] > floor]
    return {
        "since": None if since is None else iso_utc(since),
        "blocked_intervals": len(blocked),
        "latest_blocked": [
            {"interval": f"[{iso_utc(r[0])}, {iso_utc(r[1])})", "failed": json.loads(r[2])} for r in blocked[:3]
        ],
        "drift_windows": int(windows[0]),
        "drifted_windows": int(windows[1]),
        "retrain_requests": len(requests),
        "latest_retrain_request": None
        if not requests
        else {"window_end": iso_utc(requests[0][0]), "reason": requests[0][1]},
    }


def status(settings: Settings, engine: Engine) -> StatusReport:
    from sqlalchemy import make_url

    models, errors, never_run = [], [], []
    for path in spec_paths(settings.specs_dir):
        try:
            spec = load_spec(path)
        except SpecError as exc:
            errors.append(str(exc))
            continue
        if has_run(engine, spec.name):
            models.append(model_status(settings, engine, spec))
        else:
            never_run.append(spec.name)  # e.g. the shipped examples in a home that runs your own models
    storage = {
        "tables": make_url(settings.tables_url).render_as_string(hide_password=True),
        "tables_from": settings.tables_from,
        "lake": settings.lake.uri,
    }
    return {
        "home": str(settings.home),
        "storage": storage,
        "models": models,
        "not_run_here": never_run,
        "spec_errors": errors,
    }


def _metric_text(values: dict[str, Any], names: tuple[str, ...]) -> str:
    return " ".join(f"{n}={'n/a' if values.get(n) is None else format(values[n], '.3f')}" for n in names)


def format_status(report: StatusReport) -> str:
    storage = report["storage"]
    lines = [
        f"pipelines home: {report['home']}",
        f"tables: {storage['tables']} (from {storage['tables_from']})",
        f"lake: {storage['lake']}",
    ]
    for m in report["models"]:
        lines.append(f"\nmodel {m['model']} ({m['task']})")
        since = f" since {m['champion_since']}" if m["champion_since"] else ""
        g = m["last_gate_decision"]
        if m["champion_version"] is None and g and g["reason"].startswith("no better than the base rate"):
            # Say why there is no champion, with the figures: the candidate learned nothing the base rate lacks.
            lines.append(f"  no champion: v{g['challenger_version']} is {g['reason']}")
        champion, challenger = m["champion_version"], m["challenger_version"]
        lines.append(
            f"  champion: {'none' if champion is None else f'v{champion}'}{since}   challenger: "
            + (
                "none"
                if challenger is None
                else f"v{challenger}" + (" (the champion)" if challenger == champion else "")
            )
        )
        if m["champion_holdout"]:
            lines.append(
                f"  champion's holdout at training: {_metric_text(m['champion_holdout'], TASK_METRICS[m['task']])}"
            )
        story = m["since_champion"]
        start = f"the champion's training data ({story['since']})" if story["since"] else "the start"
        lines.append(
            f"  since {start}: {story['blocked_intervals']} interval(s) still blocked, {story['drifted_windows']} of "
            f"{story['drift_windows']} drift window(s) drifted, {story['retrain_requests']} retraining request(s)"
        )
        for b in story["latest_blocked"]:
            lines.append(f"    blocked {b['interval']}: {'; '.join(b['failed'])}")
        if story["latest_retrain_request"]:
            r = story["latest_retrain_request"]
            lines.append(f"    latest retraining request (window ending {r['window_end']}): {r['reason']}")
        if g:
            lines.append(
                f"  last gate ({g['at']}): v{g['challenger_version']} vs "
                + ("none" if g["champion_version"] is None else f"v{g['champion_version']}")
                + f": {g['action']} ({g['reason']})"
            )
        lines.append(
            f"  rows in the 24 h up to the latest ({m['latest_prediction_as_of']}): "
            f"predictions={m['predictions_last_24h']} labels={m['labels_last_24h']}; "
            f"backtest_metrics={m['backtest_metrics']}"
        )
        for b in m["latest_backtest"]:
            lines.append(
                f"  backtest cohort {b['cohort']} v{b['model_version']} ({b['scored_by']}): n={b['n']}"
                + (f" of {b['predictions']} predictions" if b["predictions"] is not None else "")
                + f", labels as of {b['labels_as_of']}"
                + (" (labels still due)" if b["complete"] is False else "")
                + " "
                + _metric_text(b, TASK_METRICS[m["task"]])
            )
        q = m["last_quality_report"]
        if q:
            lines.append(
                f"  last quality report ([{q['interval_start']}, {q['interval_end']}), v{q['model_version']}, "
                f"{q['rows']} labelled rows): {_metric_text(q['metrics'], TASK_METRICS[m['task']])}"
            )
            lines.append(f"    {q['path'] or 'no Evidently report: a class absent from its labels'}")
        v = m["last_validation"]
        if v:
            verdict = "passed" if v["success"] else f"FAILED: {'; '.join(v['failed_expectations'])}"
            lines.append(f"  last validation ({v['dag_id']}, up to {v['interval_end']}): {verdict}")
        d = m["last_drift_report"]
        if d:
            lines.append(
                f"  last drift report (up to {d['interval_end']}): {len(d['drifted_columns'])} of {d['columns']} "
                f"feature columns drifted ({d['drift_share']:.3f}): {', '.join(d['drifted_columns']) or 'none'}"
            )
            if d["verdict"]:
                action = "RETRAIN requested" if d["verdict"]["retrain"] else "no retraining"
                lines.append(f"  drift verdict: {action}: {d['verdict']['reason']}")
            lines.append(f"    {d['path']}")
    if report["not_run_here"]:
        lines.append(f"\nnot run in this home: {', '.join(report['not_run_here'])}")
    lines += [f"\nspec error: {e}" for e in report["spec_errors"]]
    return "\n".join(lines)
