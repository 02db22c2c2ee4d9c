"""`pipelines` CLI: storage read as tasks read it (the same Airflow connections), read-only where it only looks."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, make_url

from pipelines.cli import event_summary
from pipelines.storage import database, tables
from tests import REPO_ROOT
from tests.conftest import postgres_database


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_") and k != "PIPELINES_TABLES_URL"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT, env=base | env
    )


def prediction(entity: str) -> dict[str, Any]:
    at = datetime(2026, 1, 3, 2, tzinfo=UTC)
    return {
        "model_name": "demo_churn",
        "entity_id": entity,
        "as_of": at,
        "model_version": "1",
        "score": 0.5,
        "features_sha256": "0" * 64,
        "dag_run_id": "test",
        "scored_at": at,
    }


def test_status_reads_the_tables_of_the_airflow_connection_tasks_use(tmp_path: Path) -> None:
    with postgres_database("pipelines_cli") as url:
        database.upgrade_schema(url)
        engine = database.make_engine(url)
        with engine.begin() as connection:
            connection.execute(insert(tables.predictions), [prediction(f"E{i}") for i in range(3)])
        engine.dispose()
        sqlite_url = f"sqlite:///{tmp_path / 'tables.db'}"
        database.upgrade_schema(sqlite_url)  # what PIPELINES_TABLES_URL names: empty, and not what tasks use
        connection_uri = make_url(url).set(drivername="postgres").render_as_string(hide_password=False)
        result = cli(
            "status",
            "--json",
            env={"PIPELINES_TABLES_URL": sqlite_url, "AIRFLOW_CONN_PIPELINES_TABLES": connection_uri},
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["storage"]["tables_from"] == "Airflow connection 'pipelines_tables'"
    assert report["storage"]["tables"].startswith("postgresql+psycopg://")
    assert report["models"][0]["predictions_last_24h"] == 3
    assert "from Airflow connection 'pipelines_tables'" in result.stderr  # said on every command


def test_status_opens_the_tables_read_only(tmp_path: Path) -> None:
    path = tmp_path / "tables.db"
    database.upgrade_schema(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:  # a file in the default journal mode, as a read-only copy may be
        connection.execute("PRAGMA journal_mode=DELETE")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = cli("status", "--json", env={"PIPELINES_TABLES_URL": f"sqlite:///{path}"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["storage"]["tables_from"] == "PIPELINES_TABLES_URL"
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_missing_tables_database_is_one_clear_line(tmp_path: Path) -> None:
    result = cli("history", "demo_churn", env={"PIPELINES_TABLES_URL": f"sqlite:///{tmp_path / 'none.db'}"})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: the pipeline's tables at sqlite:///")
    assert "run `pipelines db upgrade`" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "none.db").exists()  # looking does not create it


def event(kind: str, to_version: str | None, details: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "event": kind,
        "to_version": to_version,
        "from_version": extra.get("from_version"),
        "alias": extra.get("alias"),
        "reason": extra.get("reason", ""),
        "details": json.dumps(details) if details else None,
    }


def test_history_shows_a_version_only_where_the_event_has_one() -> None:
    drift = event_summary(event("drift_trigger", None, {"window_end": "2026-01-03T05:00:00+00:00"}))
    assert drift == "drift: retraining requested for the window ending 2026-01-03T05:00:00+00:00"
    assert event_summary(event("alias_moved", "2", alias="champion", from_version="1")) == "champion: v1 -> v2"
    assert event_summary(event("alias_moved", "1", alias="champion")) == "champion: - -> v1"
    assert event_summary(event("gate_decision", "2", {"action": "keep_champion"}, from_version="1")) == (
        "gate: v2 vs champion v1: keep_champion"
    )
    assert event_summary(event("approval", "2", reason="approved")) == "approval of v2: approved"
    assert event_summary(event("model_adopted", "1")) == "adopted v1"


def test_run_params_are_key_equals_value_read_as_json_where_they_are_json() -> None:
    from pipelines.cli import _param

    assert _param("num_boost_round=2") == ("num_boost_round", 2)
    assert _param("dry_run=true") == ("dry_run", True)
    assert _param('xgboost_params={"max_depth": 1}') == ("xgboost_params", {"max_depth": 1})
    assert _param("rescore_with=champion") == ("rescore_with", "champion")
    assert _param("reason=a=b") == ("reason", "a=b")
    for bad in ("rescore_with", "=2"):
        with pytest.raises(ValueError, match=r"is not KEY=VALUE, e\.g\. rescore_with=champion"):
            _param(bad)
