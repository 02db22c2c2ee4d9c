"""What `pipelines status` reports per model: champion, recent rows, last validation, last drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from pipelines import tables
from pipelines.config import Settings
from pipelines.metrics import TASK_METRICS
from pipelines.registry import CHALLENGER, CHAMPION, alias_since, alias_version
from pipelines.spec import ModelSpec, SpecError, load_spec, spec_paths


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


def model_status(settings: Settings, engine: Engine, spec: ModelSpec) -> dict[str, Any]:
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
    events = tables.model_events
    predictions, latest_prediction = recent_rows(engine, tables.predictions, model_name)
    gate = _latest(engine, events, model_name, events.c.id, events.c.event == "gate_decision")
    return {
        "model": model_name,
        "task": spec.task,
        "champion_version": champion,
        "champion_since": None if since is None else iso_utc(since),
        "challenger_version": alias_version(settings, model_name, CHALLENGER),
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


def status(settings: Settings, engine: Engine) -> dict[str, Any]:
    from sqlalchemy import make_url

    models, errors = [], []
    for path in spec_paths(settings.specs_dir):
        try:
            spec = load_spec(path)
        except SpecError as exc:
            errors.append(str(exc))
            continue
        models.append(model_status(settings, engine, spec))
    storage = {
        "tables": make_url(settings.tables_url).render_as_string(hide_password=True),
        "tables_from": settings.tables_from,
        "lake": settings.lake.uri,
    }
    return {"home": str(settings.home), "storage": storage, "models": models, "spec_errors": errors}


def _metric_text(values: dict[str, Any], names: tuple[str, ...]) -> str:
    return " ".join(f"{n}={'n/a' if values.get(n) is None else format(values[n], '.3f')}" for n in names)


def format_status(report: dict[str, Any]) -> str:
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
        lines.append(f"  champion: v{m['champion_version']}{since}   challenger: v{m['challenger_version']}")
        if g:
            lines.append(
                f"  last gate ({g['at']}): v{g['challenger_version']} vs v{g['champion_version']}: {g['action']} ({g['reason']})"
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
    lines += [f"\nspec error: {e}" for e in report["spec_errors"]]
    return "\n".join(lines)
