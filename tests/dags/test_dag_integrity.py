"""The dags/ folder parses cleanly, quickly, without heavy imports, and every DAG states its contract."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import REPO_ROOT

PARSER = Path(__file__).with_name("parse_dags.py")
SCHEDULED = {"demo_churn__train", "demo_churn__score", "demo_churn__backtest", "demo_churn__monitor"}
EXPECTED = SCHEDULED | {"demo_churn__rollback"}
TIMETABLES = {
    "demo_churn__train": "AssetOrTimeSchedule",  # nightly, or when the drift policy asks
    "demo_churn__score": "CronDataIntervalTimetable",
    "demo_churn__backtest": "CronDataIntervalTimetable",
    "demo_churn__monitor": "AssetTriggeredTimetable",  # on every predictions event
    "demo_churn__rollback": "NullTimetable",
}
# Airflow kills a DAG file whose parse outlasts core.dagbag_import_timeout (30 s by default).
AIRFLOW_IMPORT_TIMEOUT_S = 30


def parse(folder: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PIPELINES_TASK_RETRIES"}  # production retries
    result = subprocess.run(
        [sys.executable, str(PARSER), str(folder)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    return parse(REPO_ROOT / "dags")


def test_no_import_errors(parsed: dict[str, Any]) -> None:
    assert parsed["import_errors"] == {}
    assert set(parsed["dags"]) >= EXPECTED


def test_dag_files_stay_thin(parsed: dict[str, Any]) -> None:
    assert parsed["heavy_modules_loaded"] == []
    for file, seconds in parsed["parse_seconds"].items():
        print(f"parse time {file}: {seconds:.3f}s")
        assert seconds < AIRFLOW_IMPORT_TIMEOUT_S, file


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_contract(parsed: dict[str, Any], dag_id: str) -> None:
    dag = parsed["dags"][dag_id]
    assert dag["timetable"] == TIMETABLES[dag_id]
    assert dag["start_date_tz"] is not None
    assert dag["catchup"] is False
    assert "pipelines" in dag["tags"] and "model:demo_churn" in dag["tags"]
    assert len(dag["doc_md"]) > 80
    if dag_id != "demo_churn__rollback":  # a wrong version stays wrong: rollback does not retry
        assert all(retries >= 1 for retries in dag["retries"])
    assert dag["fileloc"].endswith("dags/demo_churn.py")


def test_schedules_come_from_the_spec(parsed: dict[str, Any]) -> None:
    assert parsed["dags"]["demo_churn__score"]["schedule"] == "0 * * * *"
    assert parsed["dags"]["demo_churn__train"]["schedule"] == "0 2 * * *"
    assert parsed["dags"]["demo_churn__train"]["tasks"] == [
        "approve",  # human-in-the-loop: asked only under gate.mode manual or the require_approval param
        "awaits_approval",
        "gate",
        "ingest_labels_window",
        "ingest_window",
        "promote",
        "register",
        "train",
        "validate_window",
    ]
    assert parsed["dags"]["demo_churn__train"]["params"] == [
        "dry_run",
        "num_boost_round",
        "require_approval",
        "xgboost_params",
    ]
    assert parsed["dags"]["demo_churn__rollback"]["params"] == ["reason", "version"]
    assert parsed["dags"]["demo_churn__monitor"]["params"] == ["interval_end", "interval_start"]
    assert parsed["dags"]["demo_churn__rollback"]["schedule"] is None


def test_assets_chain_scoring_monitoring_and_retraining(parsed: dict[str, Any]) -> None:
    dags = parsed["dags"]
    assert dags["demo_churn__score"]["outlets"] == {"score": ["demo_churn__predictions"]}
    assert dags["demo_churn__monitor"]["schedule_assets"] == ["demo_churn__predictions"]
    assert dags["demo_churn__monitor"]["tasks"] == ["drift_persists", "drift_report", "request_retraining"]
    assert dags["demo_churn__monitor"]["outlets"] == {"request_retraining": ["demo_churn__drift"]}
    assert dags["demo_churn__train"]["schedule_assets"] == ["demo_churn__drift"]


def test_broken_spec_breaks_only_its_own_dags(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    shutil.copytree(REPO_ROOT / "dags", folder, ignore=shutil.ignore_patterns("__pycache__"))
    broken = (folder / "models" / "demo_churn.yaml").read_text()
    broken = broken.replace("name: demo_churn", "name: broken_model").replace("delay_hours: 6", "delay_hours: soon")
    (folder / "models" / "broken_model.yaml").write_text(broken)
    shutil.copy(folder / "demo_churn.py", folder / "broken_model.py")

    parsed = parse(folder)
    assert list(parsed["import_errors"]) == [str(folder / "broken_model.py")]
    message = next(iter(parsed["import_errors"].values()))
    assert "broken_model.yaml" in message and "label.delay_hours" in message
    assert set(parsed["dags"]) >= EXPECTED
