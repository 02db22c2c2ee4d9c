"""When drift is real and persistent enough to retrain, and when it is too soon to retrain again.

A window (one monitored scoring interval) drifted when at least `drift.drift_share` of its
feature columns drifted. The policy fires when `drift.drifted_windows` (N) of the last
`drift.windows` (M) windows since the last retraining drifted, and it did not fire within
`drift.cooldown_hours` before. Time is the monitored intervals' own time, never the wall clock, so
re-running a past window reaches the same verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from pipelines.core.errors import PermanentError
from pipelines.core.spec import DriftSpec, ModelSpec
from pipelines.storage import tables
from pipelines.storage.settings import Settings

DRIFT_TRIGGER = "drift_trigger"  # model_events.event of a retraining the policy requested


@dataclass(frozen=True)
class Window:
    interval_end: datetime
    drifted: bool
    drifted_columns: list[str]
    report_path: str


@dataclass(frozen=True)
class PolicyVerdict:
    retrain: bool
    reason: str
    window_end: str
    windows_considered: int  # since the last retraining (or request), at most M
    windows_drifted: int
    drifted_columns: list[str]  # of the latest window
    report_path: str  # of the latest window
    last_retrain: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def decide(
    policy: DriftSpec, windows: list[Window], last_retrain: datetime | None, last_request: datetime | None
) -> PolicyVerdict:
    """The verdict at the newest window. `windows` are newest first and end no later than it.

    Windows count from the last retraining of any kind (a new model, a new reference); the
    cooldown runs from the last retraining this policy requested, so drift cannot cause a storm
    of retrainings while nightly ones go on as scheduled.
    """
    if not windows:
        raise PermanentError("the drift policy needs at least the window being judged")
    latest = windows[0]
    counted_from = max((t for t in (last_retrain, last_request) if t is not None), default=None)
    since = [w for w in windows if counted_from is None or w.interval_end > counted_from][: policy.windows]
    drifted = sum(w.drifted for w in since)
    base: dict[str, Any] = {
        "window_end": latest.interval_end.isoformat(),
        "windows_considered": len(since),
        "windows_drifted": drifted,
        "drifted_columns": latest.drifted_columns,
        "report_path": latest.report_path,
        "last_retrain": None if counted_from is None else counted_from.isoformat(),
    }
    counted = (
        f"{drifted} of the last {len(since)} window(s) drifted (policy: {policy.drifted_windows} of {policy.windows})"
    )
    if last_request == latest.interval_end:
        return PolicyVerdict(False, f"retraining was already requested for this window; {counted}", **base)
    if last_request is not None and latest.interval_end < last_request + timedelta(hours=policy.cooldown_hours):
        until = last_request + timedelta(hours=policy.cooldown_hours)
        return PolicyVerdict(
            False,
            f"cooldown until {until.isoformat()} after the retraining requested at {last_request.isoformat()}; {counted}",
            **base,
        )
    if drifted < policy.drifted_windows:
        return PolicyVerdict(False, f"no persistent drift: {counted}", **base)
    columns = ", ".join(latest.drifted_columns) or "none in the latest window"
    return PolicyVerdict(True, f"persistent drift: {counted}; drifted columns: {columns}", **base)


def recent_windows(engine: Engine, model_name: str, until: datetime, limit: int) -> list[Window]:
    d = tables.drift_reports
    query = (
        select(d.c.interval_end, d.c.dataset_drift, d.c.drifted_column_names, d.c.report_path)
        .where(d.c.model_name == model_name, d.c.interval_end <= until)
        .order_by(d.c.interval_end.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        Window(_utc(r.interval_end), bool(r.dataset_drift), json.loads(r.drifted_column_names), r.report_path)
        for r in rows
    ]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def last_trigger(engine: Engine, model_name: str, until: datetime) -> datetime | None:
    """The window end of the last retraining the policy requested, up to `until`."""
    e = tables.model_events
    query = select(e.c.details).where(e.c.model_name == model_name, e.c.event == DRIFT_TRIGGER).order_by(e.c.id)
    with engine.connect() as connection:
        ends = [datetime.fromisoformat(json.loads(d)["window_end"]) for d in connection.execute(query).scalars()]
    ends = [end for end in ends if end <= until]
    return max(ends) if ends else None


def newest_training(settings: Settings, model_name: str, until: datetime) -> datetime | None:
    """The end of the newest registered version's training window, if it ended by `until`."""
    from pipelines.storage.registry import newest_training_end

    end = newest_training_end(settings, model_name)
    return end if end is not None and end <= until else None


def evaluate(spec: ModelSpec, settings: Settings, engine: Engine, window_end: datetime) -> PolicyVerdict:
    """Judge the window ending at `window_end` (already monitored) and keep the verdict with its report.

    A window judged before keeps its recorded verdict: a re-run or a late run reads it back, never
    decides again over it (a retraining it requested is not requested twice).
    """
    recorded = recorded_verdict(engine, spec.name, window_end)
    if recorded is not None:
        if recorded.retrain and last_trigger(engine, spec.name, window_end) == window_end:
            return replace(
                recorded, retrain=False, reason=f"retraining was already requested for this window: {recorded.reason}"
            )
        return recorded
    policy = spec.drift
    # The last M windows are enough: those after the last retraining are a prefix of them.
    windows = recent_windows(engine, spec.name, window_end, limit=policy.windows)
    if not windows or windows[0].interval_end != window_end:
        raise PermanentError(
            f"{spec.name}: no drift report for the window ending {window_end.isoformat()}; monitor it first"
        )
    verdict = decide(
        policy,
        windows,
        newest_training(settings, spec.name, window_end),
        last_trigger(engine, spec.name, window_end),
    )
    record_verdict(engine, spec.name, window_end, verdict)
    return verdict


def recorded_verdict(engine: Engine, model_name: str, window_end: datetime) -> PolicyVerdict | None:
    d = tables.drift_reports
    with engine.connect() as connection:
        stored = connection.execute(
            select(d.c.verdict).where(d.c.model_name == model_name, d.c.interval_end == window_end)
        ).scalar_one_or_none()
    return None if stored is None else PolicyVerdict(**json.loads(stored))


def stored_verdict(engine: Engine, model_name: str, window_end: datetime) -> PolicyVerdict:
    verdict = recorded_verdict(engine, model_name, window_end)
    if verdict is None:
        raise PermanentError(f"{model_name}: no policy verdict for the window ending {window_end.isoformat()}")
    return verdict


def record_verdict(engine: Engine, model_name: str, window_end: datetime, verdict: PolicyVerdict) -> None:
    """Keep the verdict with its window's report; a verdict already recorded is never replaced."""
    d = tables.drift_reports
    with engine.begin() as connection:
        connection.execute(
            d.update()
            .where(d.c.model_name == model_name, d.c.interval_end == window_end, d.c.verdict.is_(None))
            .values(verdict=verdict.to_json())
        )


def record_trigger(
    engine: Engine, model_name: str, verdict: PolicyVerdict, dag_run_id: str, actor: str
) -> dict[str, Any]:
    """Record the retraining request once per window (a retry finds it) and return what the Asset event carries."""
    from pipelines.storage.registry import record_event

    window_end = datetime.fromisoformat(verdict.window_end)
    if last_trigger(engine, model_name, window_end) != window_end:
        with engine.begin() as connection:
            record_event(
                connection, model_name, DRIFT_TRIGGER, reason=verdict.reason, actor=actor, dag_run_id=dag_run_id,
                details=json.loads(verdict.to_json()),
            )  # fmt: skip
    return {
        "model": model_name,
        "reason": verdict.reason,
        "report": verdict.report_path,
        "window_end": verdict.window_end,
    }
