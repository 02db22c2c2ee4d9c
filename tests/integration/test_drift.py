"""Drift that acts, through real Airflow runs (`dag.test()`), real Evidently and the Airflow database.

The source turns on the generator's drift knob at 2026-01-03 05:00 (it shifts monthly_charges,
support_calls and plan). The champion is trained on the clean days before. Each scored hour is
then monitored, in order: 02:00, 03:00, 04:00 are like the reference; 05:00 and 06:00 drift, and
the policy (2 drifted of the last 4 windows) requests one retraining through the `__drift` Asset;
07:00 drifts too, and the cooldown holds back a second request. Tests run in file order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from pipelines.dev.demo_data import DemoConfig, write_source
from pipelines.storage import database, tables
from pipelines.storage.settings import Settings
from tests.conftest import module_home
from tests.integration.conftest import cli_output, status_report

FIRST_NIGHT = datetime(2026, 1, 3, 2, tzinfo=UTC)
DRIFT_FROM = datetime(2026, 1, 3, 5, tzinfo=UTC)
HOURS = [FIRST_NIGHT + timedelta(hours=h) for h in range(6)]  # 02:00 .. 07:00
SHIFTED = {"monthly_charges", "plan", "support_calls"}  # what the generator's drift knob moves


@pytest.fixture(scope="module")
def home(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with module_home(tmp_path_factory.mktemp("drift")) as settings:
        write_source(
            settings.source / "demo_churn",
            DemoConfig(drift_from=DRIFT_FROM),
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 3, 12, tzinfo=UTC),
        )
        yield settings


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def monitor(hour: datetime) -> Any:
    """A monitor run for one scored hour, as the predictions Asset event would start it."""
    from pipelines.airflow.dags import run_in_process

    conf = {"interval_start": hour.isoformat(), "interval_end": (hour + timedelta(hours=1)).isoformat()}
    return run_in_process("demo_churn__monitor", None, run_conf=conf, run_after=hour + timedelta(hours=1))


def drift_events() -> list[dict[str, Any]]:
    """The `demo_churn__drift` Asset events in Airflow's database, and whether the train DAG is queued."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra, AssetEvent.source_dag_id, AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == "demo_churn__drift")
        ).all()
    return [{"extra": r.extra, "dag": r.source_dag_id, "task": r.source_task_id} for r in rows]


def queued_train_runs() -> int:
    """Asset-triggered runs the scheduler will create for the train DAG (what it consumes to start one)."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        return len(
            session.execute(select(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == "demo_churn__train")).all()
        )


def set_train_paused(paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(
            DagModel.__table__.update().where(DagModel.dag_id == "demo_churn__train").values(is_paused=paused)
        )


def verdict_at(engine: Engine, hour: datetime) -> dict[str, Any]:
    d = tables.drift_reports
    with engine.connect() as connection:
        row = connection.execute(select(d.c.verdict).where(d.c.interval_start == hour)).scalar_one()
    return dict(json.loads(row))


def test_champion_trained_and_hours_scored(home: Settings) -> None:
    from pipelines.airflow.dags import run_in_process

    assert run_in_process("demo_churn__train", FIRST_NIGHT).state == "success"
    set_train_paused(False)  # as in production: a paused DAG is not queued by Asset events
    for hour in HOURS:
        dag_run = run_in_process("demo_churn__score", hour + timedelta(hours=1))
        assert dag_run.state == "success", states(dag_run)
    assert drift_events() == [] and queued_train_runs() == 0


def test_windows_like_the_reference_trigger_nothing(engine: Engine) -> None:
    for hour in HOURS[:3]:
        dag_run = monitor(hour)
        assert dag_run.state == "success", states(dag_run)
        assert states(dag_run) == {
            "drift_report": "success",
            "drift_persists": "success",
            "request_retraining": "skipped",
            "quality_report": "success",
        }
        verdict = verdict_at(engine, hour)
        assert not verdict["retrain"] and verdict["windows_drifted"] == 0
    d = tables.drift_reports
    with engine.connect() as connection:
        clean = connection.execute(select(d.c.dataset_drift, d.c.drifted_column_names)).all()
    # No window drifted. A single column can cross its 5% test by chance (8 tests a window); never a shifted one.
    assert [r.dataset_drift for r in clean] == [False] * 3
    for row in clean:
        flagged = set(json.loads(row.drifted_column_names))
        assert len(flagged) <= 1 and not flagged & SHIFTED, flagged
    assert drift_events() == [] and queued_train_runs() == 0


def test_persistent_drift_requests_exactly_one_retraining(engine: Engine) -> None:
    first = monitor(HOURS[3])  # 05:00: one drifted window is not yet persistent
    assert states(first)["request_retraining"] == "skipped"
    assert verdict_at(engine, HOURS[3])["windows_drifted"] == 1
    second = monitor(HOURS[4])  # 06:00: two of the last four windows drifted
    assert states(second)["request_retraining"] == "success", states(second)
    verdict = verdict_at(engine, HOURS[4])
    assert verdict["retrain"] and verdict["windows_drifted"] == 2 and verdict["windows_considered"] == 4

    (event,) = drift_events()
    assert (event["dag"], event["task"]) == ("demo_churn__monitor", "request_retraining")
    assert event["extra"]["kind"] == "drift" and event["extra"]["window_end"] == "2026-01-03T07:00:00+00:00"
    assert event["extra"]["report"].endswith("20260103T0600--20260103T0700.html")
    assert "persistent drift: 2 of the last 4 window(s) drifted" in event["extra"]["reason"]
    assert queued_train_runs() == 1  # the scheduler will start exactly one drift-triggered training

    e = tables.model_events
    with engine.connect() as connection:
        triggers = connection.execute(select(e.c.reason).where(e.c.event == "drift_trigger")).all()
    assert len(triggers) == 1


def test_the_cooldown_holds_back_a_second_retraining(engine: Engine) -> None:
    dag_run = monitor(HOURS[5])  # 07:00 drifts too, within 24 h of the request
    assert states(dag_run)["request_retraining"] == "skipped"
    verdict = verdict_at(engine, HOURS[5])
    assert not verdict["retrain"] and verdict["reason"].startswith("cooldown until 2026-01-04T07:00:00+00:00")
    recorded = {hour: verdict_at(engine, hour) for hour in HOURS}
    again = monitor(HOURS[4])  # and re-running the window that fired does not fire twice...
    assert states(again)["request_retraining"] == "skipped"
    for hour in HOURS[:3]:  # ...nor does a late run of earlier windows (events consumed at once) decide again
        assert monitor(hour).state == "success"
    # Every recorded decision is read back, none is overwritten: 06:00 still says why it fired.
    assert {hour: verdict_at(engine, hour) for hour in HOURS} == recorded
    assert recorded[HOURS[4]]["retrain"] and "persistent drift" in recorded[HOURS[4]]["reason"]
    assert len(drift_events()) == 1 and queued_train_runs() == 1
    set_train_paused(True)


def test_drift_table_names_the_shifted_columns_and_no_other(home: Settings, engine: Engine) -> None:
    m = tables.drift_metrics
    with engine.connect() as connection:
        rows = connection.execute(select(m.c.interval_start, m.c.column_name, m.c.drifted)).all()
    from pipelines.core.spec import load_spec

    spec = load_spec(home.specs_dir / "demo_churn.yaml")
    assert {r.column_name for r in rows} == {*spec.features.all, "model_score"}  # and the prediction's drift
    for hour in HOURS:
        drifted = {r.column_name for r in rows if r.interval_start.replace(tzinfo=UTC) == hour and r.drifted}
        if hour >= DRIFT_FROM:
            assert drifted - {"model_score"} == SHIFTED, hour
        else:
            assert len(drifted) <= 1 and not drifted & SHIFTED, hour  # at most chance, as above
    d = tables.drift_reports
    with engine.connect() as connection:
        reports = connection.execute(
            select(d.c.report_path, d.c.current_rows, d.c.reference_rows, d.c.columns, d.c.drifted_columns)
        ).all()
    assert len(reports) == len(HOURS)
    for report in reports:
        key = report.report_path.removeprefix(home.lake.uri_of("").rstrip("/") + "/")
        html = home.lake.get(key).decode()
        assert len(html) > 10_000 and report.current_rows > 0 and report.reference_rows > 1000
        # One number for one fact: the report's headline counts the features, as the table and the log do.
        assert report.columns == len(spec.features.all)
        assert f"({report.drifted_columns} out of {report.columns})" in html, report.report_path


def test_status_shows_the_last_drift_verdict(home: Settings) -> None:
    report = status_report()
    model = report["models"][0]
    # Only models that ran here are reported; the other shipped examples are named once.
    assert [m["model"] for m in report["models"]] == ["demo_churn"]
    assert {"demo_orders", "demo_sales"} <= set(report["not_run_here"])
    assert 0.5 < model["champion_holdout"]["auc"] <= 1.0
    story = model["since_champion"]
    assert (story["drift_windows"], story["drifted_windows"], story["retrain_requests"]) == (6, 3, 1)
    assert story["latest_retrain_request"]["window_end"] == "2026-01-03T07:00:00+00:00"
    drift = model["last_drift_report"]
    assert sorted(drift["drifted_columns"]) == sorted(SHIFTED)
    assert drift["verdict"]["retrain"] is False and drift["verdict"]["reason"].startswith("cooldown until")
    text = cli_output("status")
    assert "drift verdict: no retraining: cooldown until" in text
    assert "drift window(s) drifted, 1 retraining request(s)" in text and "3 of 6 drift window(s)" in text
    n, k = len(drift["drifted_columns"]), drift["columns"]
    assert f"{n} of {k} feature columns drifted ({n / k:.3f})" in text


def test_history_says_why_retraining_was_requested(home: Settings) -> None:
    text = cli_output("history", "demo_churn")
    assert "drift: retraining requested for the window ending 2026-01-03T07:00:00+00:00" in text
    assert "vNone" not in text


def test_a_quiet_window_and_an_all_null_column_pass_through_the_monitor(home: Settings, engine: Engine) -> None:
    import numpy as np

    from pipelines.storage.lake import hour_partition, read_partition, write_partition

    scored, _ = read_partition(home.lake, hour_partition("demo_churn", "scored", HOURS[0]))
    quiet, sparse = datetime(2026, 1, 3, 20, tzinfo=UTC), datetime(2026, 1, 3, 21, tzinfo=UTC)
    for hour, frame in ((quiet, scored.iloc[0:0]), (sparse, scored.assign(support_calls=np.nan))):
        manifest = {"model": "demo_churn", "model_version": "1", "interval_start": hour.isoformat()}
        write_partition(home.lake, hour_partition("demo_churn", "scored", hour), frame, manifest)
        dag_run = monitor(hour)
        assert dag_run.state == "success", states(dag_run)
        assert states(dag_run)["request_retraining"] == "skipped"  # inside the cooldown either way
    d, m = tables.drift_reports, tables.drift_metrics
    with engine.connect() as connection:
        reports = {
            r.interval_start.replace(tzinfo=UTC): r
            for r in connection.execute(select(d).where(d.c.interval_start >= quiet)).all()
        }
        tested = {
            r.column_name for r in connection.execute(select(m.c.column_name).where(m.c.interval_start == sparse))
        }
    assert reports[quiet].current_rows == 0 and not reports[quiet].dataset_drift and reports[quiet].columns == 0
    assert reports[sparse].current_rows == len(scored) and reports[sparse].columns == 7  # 8 features, one empty
    assert "support_calls" not in tested and "monthly_charges" in tested


def test_drift_settings_pick_columns_tests_and_a_seasonal_reference(home: Settings, tmp_path: Path) -> None:
    """The spec's drift section, through the monitor's own function on real lake data and Evidently.
    A window drifted against the training sample is not drifted against the same period a day
    earlier when that period looked the same (a season, not drift); each case records its reference."""
    from pipelines.core.errors import PermanentError
    from pipelines.core.spec import load_spec
    from pipelines.stages.drift import DriftSummary, monitor_interval
    from pipelines.storage.lake import hour_partition, read_partition, write_partition

    base = load_spec(home.specs_dir / "demo_churn.yaml")
    # A day after the drift began, the same shifted population: 07:00's rows served at 06:00 next day.
    scored, _ = read_partition(home.lake, hour_partition("demo_churn", "scored", HOURS[5]))
    window_start = HOURS[4] + timedelta(days=1)
    window = window_start, window_start + timedelta(hours=1)
    manifest = {"model": "demo_churn", "model_version": "1", "interval_start": window_start.isoformat()}
    write_partition(home.lake, hour_partition("demo_churn", "scored", window_start), scored, manifest)

    def measure(case: str, **settings: Any) -> tuple[DriftSummary, Engine]:
        spec = base.model_validate({**base.model_dump(), "drift": {**base.drift.model_dump(), **settings}})
        url = f"sqlite:///{tmp_path / case}.db"  # a fresh record: each case measures the window anew
        database.upgrade_schema(url)
        fresh = database.make_engine(url)
        return monitor_interval(spec, home, fresh, *window, dag_run_id=f"test_{case}"), fresh

    # monthly_charges moved by 1.5 of its standard deviations: a normed Wasserstein distance of about
    # 1.5, drift by the default test, not by a threshold of 2 set in the spec.
    # support_calls gets a p-value test Evidently names without saying so (Mann-Whitney): drift at p < 0.01.
    tuned = {
        "exclude": ["region"],
        "tests": {
            "monthly_charges": {"method": "wasserstein", "threshold": 2.0},
            "support_calls": {"method": "mannw", "threshold": 0.01},
        },
    }
    training, engine = measure("training", **tuned)
    calibrated = "the training sample of v1; thresholds calibrated on 31 hours of the reference"
    assert training.reference == calibrated
    assert set(training.drifted_columns) >= SHIFTED - {"monthly_charges"}
    tested = {c.column: c for c in training.columns}
    assert "region" not in tested and len(tested) == len(base.features.all)  # 7 features and the score
    charges, calls = tested["monthly_charges"], tested["support_calls"]
    assert (charges.stattest, charges.threshold, charges.drifted) == ("wasserstein", 2.0, False)
    assert 1.2 < charges.score < 2.0
    assert (calls.stattest, calls.threshold, calls.drifted) == ("mannw", 0.01, True) and calls.score < 1e-6
    d = tables.drift_reports
    with engine.connect() as connection:
        assert connection.execute(select(d.c.reference)).scalar_one() == calibrated

    seasonal, _ = measure("same_period", reference={"kind": "same_period", "offset_days": 1})
    assert seasonal.reference == (
        "published data of [2026-01-03T06:00:00+00:00, 2026-01-03T07:00:00+00:00); "
        "stated thresholds (the reference has 1 hour(s) of at least 30 rows; calibrating needs 5)"
    )
    assert not set(seasonal.drifted_columns) & SHIFTED and len(seasonal.drifted_columns) <= 1  # chance at most

    no_history, _ = measure("fallback", reference={"kind": "same_period", "offset_days": 364})
    assert no_history.reference == (
        "the training sample of v1 (the same period [2025-01-05T06:00:00+00:00, 2025-01-05T07:00:00+00:00) has no data); "
        "thresholds calibrated on 31 hours of the reference"
    )
    assert set(no_history.drifted_columns) >= SHIFTED

    fixed, _ = measure("window", reference={"kind": "window", "start": HOURS[3], "end": HOURS[5]})
    assert fixed.reference.startswith("published data of [2026-01-03T05:00:00+00:00, 2026-01-03T07:00:00+00:00)")
    assert not set(fixed.drifted_columns) & SHIFTED and fixed.reference_rows > 1000
    with pytest.raises(
        PermanentError, match=r"drift.reference window \[2025-06-01T00:00:00\+00:00, .* has no published"
    ):
        measure(
            "empty_window", reference={"kind": "window", "start": "2025-06-01T00:00:00Z", "end": "2025-06-02T00:00:00Z"}
        )
