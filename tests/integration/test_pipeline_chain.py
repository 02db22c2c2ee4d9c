"""The whole chain through real Airflow runs (`dag.test()`), real GX, MLflow, XGBoost and Evidently.

One timeline, in order: the source holds four days; hour 2026-01-03 10:00 is corrupted by the
generator's bad-data knob. Tests in this module run in file order and build on each other.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from pipelines import tables
from pipelines.config import REPO_ROOT, Settings
from pipelines.demo_data import DemoConfig, write_source
from pipelines.lake import hour_partition, open_partition
from tests.conftest import module_home

UTC = UTC
BAD_HOUR = datetime(2026, 1, 3, 10, tzinfo=UTC)
FIRST_NIGHT = datetime(2026, 1, 3, 2, tzinfo=UTC)  # train run: window [01-01 02:00, 01-03 02:00)
SCORED_HOURS = [FIRST_NIGHT + timedelta(hours=h) for h in range(3)]  # 02:00, 03:00, 04:00


@pytest.fixture(scope="module")
def home(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with module_home(tmp_path_factory.mktemp("chain")) as settings:
        write_source(
            settings.source / "demo_churn",
            DemoConfig(bad_hours=frozenset({BAD_HOUR})),
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 4, 12, tzinfo=UTC),
        )
        yield settings


@pytest.fixture(scope="module")
def engine(home: Settings) -> Engine:
    engine = tables.make_engine(home.tables_url)
    return engine


def run(dag_id: str, logical_date: datetime) -> Any:
    from pipelines.airflow_dags import run_in_process

    return run_in_process(dag_id, logical_date)


def task_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def predictions_digest(engine: Engine) -> tuple[int, str]:
    p = tables.predictions
    with engine.connect() as connection:
        rows = connection.execute(select(p).order_by(p.c.entity_id, p.c.as_of)).all()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def champion(settings: Settings) -> str | None:
    from pipelines.registry import champion_version

    return champion_version(settings, "demo_churn")


def test_train_registers_a_champion_with_lineage(home: Settings, engine: Engine) -> None:
    from mlflow import MlflowClient

    dag_run = run("demo_churn__train", FIRST_NIGHT)
    assert dag_run.state == "success", task_states(dag_run)
    assert champion(home) == "1"

    client = MlflowClient()
    version = client.get_model_version("demo_churn", "1")
    assert version.status == "READY"
    assert set(version.aliases) == {"champion", "challenger"}
    mlflow_run = client.get_run(version.run_id)
    tags = mlflow_run.data.tags
    for tag in (
        "dag_id",
        "dag_run_id",
        "logical_date",
        "data_sha256",
        "suite",
        "suite_sha256",
        "git_sha",
        "xgboost_version",
        "device",
    ):
        assert tags.get(tag), f"missing lineage tag {tag}"
    assert tags["dag_id"] == "demo_churn__train" and tags["device"] in {"cpu", "cuda"}
    assert tags["window_start"] == "2026-01-01T02:00:00+00:00" and tags["window_end"] == "2026-01-03T02:00:00+00:00"
    assert mlflow_run.data.metrics["holdout_auc"] > 0.7
    assert mlflow_run.inputs.dataset_inputs, "the training dataset is logged with mlflow.log_input"

    import mlflow

    model_info = mlflow.models.get_model_info("models:/demo_churn/1")
    assert model_info.signature is not None and "xgboost" in model_info.flavors
    assert model_info.flavors["xgboost"]["model_format"] == "json"

    with engine.connect() as connection:
        moves = connection.execute(
            select(tables.model_events.c.alias, tables.model_events.c.to_version).where(
                tables.model_events.c.event == "alias_moved"
            )
        ).all()
    assert sorted(moves) == [("challenger", "1"), ("champion", "1")]


def test_scoring_logs_every_row_of_the_interval(home: Settings, engine: Engine) -> None:
    for hour in SCORED_HOURS:
        dag_run = run("demo_churn__score", hour + timedelta(hours=1))
        assert dag_run.state == "success", task_states(dag_run)
    expected = sum(open_partition(hour_partition(home.lake, "demo_churn", "raw", h)).rows for h in SCORED_HOURS)
    p = tables.predictions
    with engine.connect() as connection:
        rows = connection.execute(select(p.c.model_version, p.c.as_of, p.c.score)).all()
    assert len(rows) == expected > 0
    assert {r.model_version for r in rows} == {"1"}
    assert all(0.0 <= r.score <= 1.0 for r in rows)
    as_of = sorted(r.as_of for r in rows)
    assert as_of[0] >= SCORED_HOURS[0].replace(tzinfo=None) and as_of[-1] < (
        SCORED_HOURS[-1] + timedelta(hours=1)
    ).replace(tzinfo=None)
    for hour in SCORED_HOURS:
        assert open_partition(hour_partition(home.lake, "demo_churn", "scored", hour)).manifest["model_version"] == "1"


def test_rescoring_an_interval_changes_nothing(home: Settings, engine: Engine) -> None:
    hour = SCORED_HOURS[1]
    scored = hour_partition(home.lake, "demo_churn", "scored", hour)
    before, lake_before = predictions_digest(engine), open_partition(scored).sha256
    dag_run = run("demo_churn__score", hour + timedelta(hours=1))
    assert dag_run.state == "success", task_states(dag_run)
    assert dag_run.run_id == "manual__2026-01-03T04:00:00+00:00"  # the same run, re-run
    assert predictions_digest(engine) == before
    assert open_partition(scored).sha256 == lake_before


def test_bad_data_fails_validation_and_scores_nothing(engine: Engine) -> None:
    before = predictions_digest(engine)
    dag_run = run("demo_churn__score", BAD_HOUR + timedelta(hours=1))
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["validate_interval"] == "failed"
    assert states["score"] == "upstream_failed" and states["drift_report"] == "upstream_failed"
    assert predictions_digest(engine) == before

    v = tables.validation_runs
    with engine.connect() as connection:
        row = connection.execute(select(v).where(v.c.interval_start == BAD_HOUR)).mappings().one()
    assert row["success"] is False
    failed = " ".join(json.loads(row["failed_expectations"]))
    assert "expect_column_values_to_not_be_null on column 'customer_id'" in failed
    assert "monthly_charges" in failed and "-999.0" in failed and "platinum_legacy" in failed
    assert Path(row["result_path"]).exists()


def test_drift_report_is_kept_and_summarised(engine: Engine) -> None:
    d = tables.drift_reports
    with engine.connect() as connection:
        reports = connection.execute(select(d)).mappings().all()
    assert len(reports) == len(SCORED_HOURS)
    for report in reports:
        html = Path(report["report_path"])
        assert html.exists() and html.stat().st_size > 10_000
        assert report["columns"] == 8 and report["current_rows"] > 0 and report["reference_rows"] > 1000
    with engine.connect() as connection:
        per_column = connection.execute(select(tables.drift_metrics)).all()
    assert len(per_column) == 8 * len(SCORED_HOURS)


def test_backtest_uses_matured_labels_only(engine: Engine) -> None:
    # Backtest interval [01-03 03:30, 01-04 03:30): labels of the scored hours arrive 08:00..11:00 on 01-03.
    dag_run = run("demo_churn__backtest", datetime(2026, 1, 4, 3, 30, tzinfo=UTC))
    assert dag_run.state == "success", task_states(dag_run)
    b = tables.backtest_metrics
    with engine.connect() as connection:
        rows = connection.execute(select(b)).mappings().all()
        predicted = connection.execute(select(tables.predictions.c.entity_id)).all()
    assert [(r["cohort"], r["model_version"]) for r in rows] == [("2026-01-03", "1")]
    assert rows[0]["n"] == len(predicted)
    assert rows[0]["auc"] > 0.7


def test_backtest_has_no_look_ahead(home: Settings, engine: Engine) -> None:
    from pipelines.backtest import matured_predictions
    from pipelines.spec import load_spec

    spec = load_spec(home.specs_dir / "demo_churn.yaml")
    # Labels of the 02:00 hour arrive at 08:00: a backtest up to 08:00 knows none of them, one up to
    # 09:00 knows exactly that hour, though the labels table already holds later arrivals.
    assert matured_predictions(spec, engine, datetime(2026, 1, 3, 8, tzinfo=UTC)).empty
    early = matured_predictions(spec, engine, datetime(2026, 1, 3, 9, tzinfo=UTC))
    assert len(early) > 0
    assert early["as_of"].min() >= SCORED_HOURS[0] and early["as_of"].max() < SCORED_HOURS[1]


def test_training_over_a_bad_window_is_blocked_and_keeps_the_champion(home: Settings, engine: Engine) -> None:
    dag_run = run("demo_churn__train", FIRST_NIGHT + timedelta(days=1))  # window holds the bad hour
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["validate_window"] == "failed" and states["train"] == "upstream_failed"
    assert champion(home) == "1"


def test_status_cli_reports_the_state(home: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "status", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    model = json.loads(result.stdout)["models"][0]
    assert model["model"] == "demo_churn" and model["champion_version"] == "1"
    assert model["predictions"] > 0 and model["labels"] > 0 and model["backtest_metrics"] == 1
    assert model["last_validation"]["success"] is False  # the blocked training window
    assert model["last_drift_report"]["path"].endswith(".html")
