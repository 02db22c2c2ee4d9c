"""Schema versions through Alembic, on SQLite and on the PostgreSQL server: `pipelines db upgrade`
brings a database made by earlier code to this code's schema, keeping every row; tasks refuse a
database that is not there yet and say what to run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, select, text

from pipelines.core import errors
from pipelines.storage import database, tables
from tests import REPO_ROOT
from tests.conftest import postgres_database
from tests.fixtures import schema_0fc3fec as main

AT = datetime(2026, 1, 3, 2, tzinfo=UTC)
TIMESTAMP = {"interval_start": AT, "interval_end": AT}
ROWS = {
    "predictions": [
        {
            "model_name": "m",
            "entity_id": f"E{i}",
            "as_of": AT,
            "model_version": "1",
            "score": 0.25 * i,
            "features_sha256": "f" * 64,
            "dag_run_id": "r",
            "scored_at": AT,
            "unseen_categories": i,
        }
        for i in range(3)
    ],
    "labels": [{"model_name": "m", "entity_id": "E1", "as_of": AT, "label": 1.0, "arrived_at": AT}],
    "backtest_metrics": [
        {
            "model_name": "m",
            "cohort": "2026-01-03",
            "model_version": "1",
            "scored_by": "logged",
            "slice_column": "ALL",
            "slice_value": "ALL",
            "n": 3,
            "positives": 1,
            "auc": 0.75,
            "logloss": 0.5,
            "brier": 0.2,
            "mean_score": 0.25,
            "labels_as_of": AT,
            "dag_run_id": "r",
        }
    ],
    "validation_runs": [
        {
            "model_name": "m",
            **TIMESTAMP,
            "dag_id": "m__score",
            "dag_run_id": "r",
            "suite": "m",
            "success": True,
            "failed_expectations": "[]",
            "result_path": "file:///r.json",
            "validated_at": AT,
        }
    ],
    "drift_reports": [
        {
            "model_name": "m",
            **TIMESTAMP,
            "model_version": "1",
            "reference_rows": 10,
            "current_rows": 10,
            "columns": 2,
            "drifted_columns": 1,
            "drift_share": 0.5,
            "dataset_drift": True,
            "drifted_column_names": '["a"]',
            "prediction_drift": False,
            "verdict": '{"retrain": false}',
            "report_path": "file:///d.html",
            "dag_run_id": "r",
            "created_at": AT,
        }
    ],
    "drift_metrics": [
        {
            "model_name": "m",
            **TIMESTAMP,
            "column_name": "a",
            "stattest": "ks",
            "drift_score": 0.01,
            "threshold": 0.05,
            "drifted": True,
        }
    ],
    "model_events": [
        {
            "model_name": "m",
            "event": "alias_moved",
            "alias": "champion",
            "to_version": "1",
            "reason": "first",
            "actor": "a",
            "at": AT,
            "details": None,
        }
    ],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tables.db'}"
    else:
        with postgres_database("pipelines_migrate") as database:
            yield database


def db_upgrade(url: str) -> str:
    """`pipelines db upgrade`, run as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PIPELINES_TABLES_URL": url},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def contents(engine: Engine) -> dict[str, list[dict[str, object]]]:
    """Every row of every table of the earlier schema, in the earlier columns, in a stable order."""
    found = {}
    with engine.connect() as connection:
        for name, table in main.metadata.tables.items():
            columns = [c for c in table.columns if c.name != "id"]
            rows = connection.execute(select(*columns).order_by(*columns)).mappings().all()
            found[name] = [dict(row) for row in rows]
    return found


def schema_differences(engine: Engine) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": database.SCHEMA_VERSION_TABLE})
        return list(compare_metadata(context, tables.metadata))


def test_upgrading_the_schema_of_0fc3fec_keeps_every_row(url: str) -> None:
    engine = create_engine(url)
    main.metadata.create_all(engine)  # what that code's make_engine made
    with engine.begin() as connection:
        for name, rows in ROWS.items():
            connection.execute(insert(main.metadata.tables[name]), rows)
    before = contents(engine)
    assert sum(len(rows) for rows in before.values()) == 9

    with pytest.raises(errors.SchemaError, match=r"predate schema versions: run `pipelines db upgrade`"):
        database.make_engine(url)
    assert "schema unversioned -> 0006" in db_upgrade(url)
    assert "schema 0006, up to date" in db_upgrade(url)  # a second upgrade is a no-op

    upgraded = database.make_engine(url)
    assert contents(upgraded) == before
    assert schema_differences(upgraded) == []
    # The new labels key keeps a correction beside the original delivery.
    with upgraded.begin() as connection:
        connection.execute(
            insert(tables.labels), [{**ROWS["labels"][0], "label": 0.0, "arrived_at": datetime(2026, 1, 4, tzinfo=UTC)}]
        )
    assert tables.count_rows(upgraded, tables.labels, "m") == 2
    engine.dispose()
    upgraded.dispose()


def test_an_empty_database_is_refused_until_upgraded(url: str) -> None:
    with pytest.raises(errors.SchemaError, match=r"do not exist yet: run `pipelines db upgrade`"):
        database.make_engine(url)
    status = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "status"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PIPELINES_TABLES_URL": url},
        timeout=120,
    )
    assert status.returncode == 2 and "do not exist yet: run `pipelines db upgrade`" in status.stderr
    assert "Traceback" not in status.stderr
    assert database.upgrade_schema(url) == (None, database.HEAD_REVISION)
    engine = database.make_engine(url)
    assert schema_differences(engine) == []
    engine.dispose()


def test_a_database_behind_the_code_names_its_revision(url: str) -> None:
    database.upgrade_schema(url)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {database.SCHEMA_VERSION_TABLE} SET version_num = '0001'"))
    with pytest.raises(errors.SchemaError, match=r"schema revision 0001, this code needs 0006: run `pipelines db"):
        database.make_engine(url)
    engine.dispose()


def test_older_layouts_are_adopted_without_losing_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        # backtest_metrics before slices existed, model_events before `details` existed
        connection.execute(
            "CREATE TABLE backtest_metrics (model_name VARCHAR(64) NOT NULL, cohort VARCHAR(10) NOT NULL, "
            "model_version VARCHAR(32) NOT NULL, n INTEGER NOT NULL, positives INTEGER NOT NULL, auc FLOAT, "
            "logloss FLOAT, brier FLOAT, mean_score FLOAT, labels_as_of DATETIME NOT NULL, "
            "dag_run_id VARCHAR(250) NOT NULL, UNIQUE (model_name, cohort, model_version))"
        )
        connection.execute(
            "INSERT INTO backtest_metrics VALUES ('m', '2026-01-01', '1', 5, 1, 0.5, 0.6, 0.2, 0.3, '2026-01-02', 'r')"
        )
        connection.execute(
            "CREATE TABLE model_events (id INTEGER NOT NULL PRIMARY KEY, model_name VARCHAR(64) NOT NULL, event VARCHAR(32) "
            "NOT NULL, alias VARCHAR(32), from_version VARCHAR(32), to_version VARCHAR(32), reason TEXT NOT NULL, "
            "dag_run_id VARCHAR(250), actor VARCHAR(128) NOT NULL, at DATETIME NOT NULL)"
        )
        connection.execute(
            "INSERT INTO model_events VALUES (1, 'm', 'alias_moved', 'champion', NULL, '1', 'r', NULL, 'a', '2026-01-01')"
        )
    url = f"sqlite:///{path}"
    database.upgrade_schema(url)
    engine = database.make_engine(url)
    with engine.connect() as connection:
        events = connection.execute(select(tables.model_events.c.to_version, tables.model_events.c.details)).all()
        kept = connection.execute(text("SELECT cohort, n, auc FROM backtest_metrics_before_slices")).all()
    assert events == [("1", None)]
    assert kept == [("2026-01-01", 5, 0.5)]  # renamed aside, not dropped
    assert tables.count_rows(engine, tables.backtest_metrics, "m") == 0
    others = [d for d in schema_differences(engine) if "backtest_metrics_before_slices" not in repr(d)]
    assert others == []
    engine.dispose()
