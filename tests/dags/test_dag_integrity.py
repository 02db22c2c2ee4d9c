"""The dags/ folder parses cleanly, quickly, without heavy imports, and every DAG states its contract."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import REPO_ROOT

PARSER = Path(__file__).with_name("parse_dags.py")
MODELS = ("demo_churn", "demo_orders", "demo_sales")  # hourly CSV files; daily SQL tables; a daily regression
KINDS = ("train", "score", "backtest", "monitor")
SCHEDULED = {f"{model}__{kind}" for model in MODELS for kind in KINDS}
EXPECTED = SCHEDULED | {f"{model}__rollback" for model in MODELS}
TIMETABLES = {
    "train": "AssetOrTimeSchedule",  # nightly, or when the drift policy asks
    "score": "CronDataIntervalTimetable",
    "backtest": "CronDataIntervalTimetable",
    "monitor": "AssetTriggeredTimetable",  # on every predictions event
    "rollback": "NullTimetable",
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
    model, _, kind = dag_id.partition("__")
    assert dag["timetable"] == TIMETABLES[kind]
    assert dag["start_date_tz"] is not None
    assert dag["catchup"] is False
    assert "pipelines" in dag["tags"] and f"model:{model}" in dag["tags"]
    assert len(dag["doc_md"]) > 80
    # Every task retries transient trouble; a permanent error (a wrong version, bad data) fails at once anyway.
    assert all(retries >= 1 for retries in dag["retries"])
    assert dag["fileloc"].endswith(f"dags/{model}.py")


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
        "wait_for_source",  # a rescheduling sensor: waits for the window's source files
    ]
    assert parsed["dags"]["demo_churn__score"]["tasks"] == [
        "ingest_interval",
        "score",
        "validate_interval",
        "wait_for_source",
    ]
    assert parsed["dags"]["demo_churn__train"]["params"] == [
        "dry_run",
        "num_boost_round",
        "require_approval",
        "xgboost_params",
    ]
    # Every task on Airflow's default queue unless the spec names the train task's (training.queue).
    assert set(parsed["dags"]["demo_churn__train"]["queues"].values()) == {"default"}
    assert parsed["dags"]["demo_churn__rollback"]["params"] == ["reason", "version"]
    assert parsed["dags"]["demo_churn__monitor"]["params"] == ["interval_end", "interval_start"]
    assert parsed["dags"]["demo_churn__rollback"]["schedule"] is None
    assert parsed["dags"]["demo_orders__score"]["schedule"] == "0 0 * * *"  # a daily model scores whole days


def test_assets_chain_scoring_monitoring_and_retraining(parsed: dict[str, Any]) -> None:
    dags = parsed["dags"]
    assert dags["demo_churn__score"]["outlets"] == {"score": ["demo_churn__predictions"]}
    assert dags["demo_churn__monitor"]["schedule_assets"] == ["demo_churn__predictions"]
    assert dags["demo_churn__monitor"]["tasks"] == [
        "drift_persists",
        "drift_report",
        "quality_report",
        "request_retraining",
    ]
    assert dags["demo_churn__monitor"]["outlets"] == {"request_retraining": ["demo_churn__drift"]}
    assert dags["demo_churn__train"]["schedule_assets"] == ["demo_churn__drift"]


BREAKAGES = {  # model: (what is broken in its copy of the demo spec, the field its import error must name)
    "bad_delay": (("delay_hours: 6", "delay_hours: soon"), "label.delay_hours"),
    "bad_train_cron": (('train: "0 2 * * *"', 'train: "0 2 * *"'), "schedules.train"),
    "bad_score_cron": (('score: "0 * * * *"', 'score: "30 * * * *"'), "schedules.score"),
    "bad_backtest_cron": (('backtest: "0 4 * * *"', 'backtest: "at four"'), "schedules.backtest"),
    "bad_events_path": (('path: "demo_churn/events/', 'path: "../../../etc/'), "source.events.files.path"),
    "bad_labels_path": (('path: "demo_churn/labels/', 'path: "/etc/'), "source.labels.files.path"),
    "bad_suite_path": (("suite: demo_churn", "suite: ../../etc/passwd"), "suite"),
    "missing_suite": (("suite: demo_churn", "suite: no_such_suite"), "suite"),
    "feature_not_in_suite": (
        ("payment_method]", "payment_method, device_type]"),
        "features.categorical ['device_type']",
    ),
}


def test_a_broken_spec_breaks_only_its_own_dags_naming_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    shutil.copytree(REPO_ROOT / "dags", folder, ignore=shutil.ignore_patterns("__pycache__"))
    demo = (folder / "models" / "demo_churn.yaml").read_text()
    for model, ((before, after), _) in BREAKAGES.items():
        assert before in demo, before
        (folder / "models" / f"{model}.yaml").write_text(
            demo.replace("name: demo_churn", f"name: {model}").replace(before, after)
        )
        shutil.copy(folder / "demo_churn.py", folder / f"{model}.py")

    parsed = parse(folder)
    assert sorted(parsed["import_errors"]) == sorted(str(folder / f"{model}.py") for model in BREAKAGES)
    for model, (_, field) in BREAKAGES.items():
        message = parsed["import_errors"][str(folder / f"{model}.py")]
        assert f"{model}.yaml" in message and field in message, message
    assert set(parsed["dags"]) >= EXPECTED


def test_the_train_task_runs_on_the_queue_the_spec_names(tmp_path: Path) -> None:
    from pipelines.airflow.dags import model_dags

    spec = (REPO_ROOT / "dags" / "models" / "demo_churn.yaml").read_text()
    (tmp_path / "demo_churn.yaml").write_text(spec.replace("  device: auto\n", "  device: auto\n  queue: train\n"))
    dag = model_dags(tmp_path / "demo_churn.yaml")["demo_churn__train"]
    queues = {task.task_id: task.queue for task in dag.tasks}
    assert queues.pop("train") == "train" and set(queues.values()) == {"default"}
