"""Bad input as a user would bring it, through real `dag.test()` runs: each fails on its first try
(the DAGs here have 2 retries, 1 s apart), with a message naming the file, column or version at
fault, and the published partitions, the prediction log and the model history are unchanged.

Tests run in file order on one timeline: a champion trained over 01-01..01-03, then one hour each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from pipelines.core.errors import PartitionError
from pipelines.dev.demo_data import DemoConfig, source_hour_file, write_source
from pipelines.storage import tables
from pipelines.storage.lake import hour_partition
from pipelines.storage.settings import Settings
from tests import REPO_ROOT
from tests.conftest import module_home

FIRST_NIGHT = datetime(2026, 1, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def home(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("bad_input")
    with module_home(root) as settings, pytest.MonkeyPatch.context() as patch:
        # Production retries, so a test sees whether a failure was retried; 1 s apart to keep dag.test() quick.
        patch.setenv("PIPELINES_TASK_RETRIES", "2")
        patch.setenv("PIPELINES_TASK_RETRY_DELAY_S", "1")
        write_source(
            settings.source / "demo_churn",
            DemoConfig(),
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 3, 16, tzinfo=UTC),
        )
        yield settings


def run(dag_id: str, logical_date: datetime) -> Any:
    from pipelines.airflow.dags import run_in_process

    return run_in_process(dag_id, logical_date)


def task(dag_run: Any, task_id: str) -> Any:
    return next(ti for ti in dag_run.get_task_instances() if ti.task_id == task_id)


def lake_root(home: Settings) -> Path:
    from pipelines.storage.lake import LocalLake

    assert isinstance(home.lake, LocalLake)
    return home.lake.root


def lake_files(home: Settings, zones: tuple[str, ...]) -> dict[str, str]:
    """Every file of the lake's published zones, by sha256 (staged objects, quarantine and results aside)."""
    root = lake_root(home)
    kept = tuple(f"/{zone}/" for zone in zones)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and any(part in f"/{path.relative_to(root)}" for part in kept)
    }


def records(engine: Engine) -> dict[str, Any]:
    """What a failed run must leave as it was: the prediction log, the labels and the model history."""
    with engine.connect() as connection:
        return {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (tables.predictions, tables.predictions_history, tables.labels, tables.model_events)
        } | {
            "predictions": sorted(
                connection.execute(select(tables.predictions.c.entity_id, tables.predictions.c.score)).all()
            )
        }


def failure_messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "pipelines.airflow.context")


def fails_at_once(
    home: Settings,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
    hour: datetime,
    task_id: str,
    *named: str,
) -> str:
    """Score `hour`; its `task_id` fails on the first try naming each of `named`; nothing published changes
    (the hour's raw partition is published by validation, before a failure of the score task)."""
    zones = ("scored",) if task_id == "score" else ("raw", "scored")
    lake_before, records_before = lake_files(home, zones), records(engine)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines.airflow.context"):
        dag_run = run("demo_churn__score", hour + timedelta(hours=1))
    failed = task(dag_run, task_id)
    messages = failure_messages(caplog)
    assert dag_run.state == "failed" and failed.state == "failed", messages
    assert failed.try_number == 1, f"{task_id} was retried: {messages}"
    assert "failed, not retried" in messages
    for text in named:
        assert text in messages, messages
    assert lake_files(home, zones) == lake_before
    assert records(engine) == records_before
    return messages


def logs_no_error(dag_run: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """A run that succeeded logged no ERROR line. Progress bars (GX's metrics, MLflow's downloads) write
    to stderr, which Airflow logs as ERROR lines: none may appear either."""
    assert dag_run.state == "success"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    output = capfd.readouterr()
    for bar in ("Calculating Metrics", "Downloading artifacts", "Uploading artifacts", "it/s]"):
        assert bar not in output.err + output.out


def test_train_the_champion(
    home: Settings, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from pipelines.storage.registry import champion_version

    logs_no_error(run("demo_churn__train", FIRST_NIGHT), caplog, capfd)
    assert champion_version(home, "demo_churn") == "1"


def source_file(home: Settings, hour: datetime) -> Path:
    return source_hour_file(home.source / "demo_churn" / "events", hour)


def test_a_source_file_missing_a_column_is_refused_naming_it(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    import pandas as pd

    hour = FIRST_NIGHT + timedelta(hours=1)
    path = source_file(home, hour)
    pd.read_csv(path, dtype=str).drop(columns=["plan"]).to_csv(path, index=False)
    fails_at_once(home, engine, caplog, hour, "validate_interval", "missing ['plan']", str(path))
    v = tables.validation_runs
    with engine.connect() as connection:
        row = connection.execute(select(v).where(v.c.interval_start == hour)).mappings().one()
    assert row["success"] is False and "missing ['plan']" in row["failed_expectations"]
    assert not home.lake.exists(f"{hour_partition('demo_churn', 'raw', hour)}/_manifest.json")


def test_a_source_file_with_an_extra_column_is_refused_naming_it(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    import pandas as pd

    hour = FIRST_NIGHT + timedelta(hours=2)
    path = source_file(home, hour)
    pd.read_csv(path, dtype=str).assign(device_type="tablet").to_csv(path, index=False)
    fails_at_once(home, engine, caplog, hour, "validate_interval", "unexpected ['device_type']", str(path))


def test_an_empty_source_file_is_refused_naming_it(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    hour = FIRST_NIGHT + timedelta(hours=3)
    path = source_file(home, hour)
    path.write_bytes(b"")
    fails_at_once(home, engine, caplog, hour, "ingest_interval", f"{path}: the file is empty")


def test_an_unparseable_value_fails_ingest_at_once(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    hour = FIRST_NIGHT + timedelta(hours=4)
    path = source_file(home, hour)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("monthly_charges")] = "twelve"
    path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    fails_at_once(home, engine, caplog, hour, "ingest_interval", str(path), "'monthly_charges'", "['twelve']")


def flip_bytes(path: Path) -> None:
    """Three flipped bytes, the length kept: what a bad disk or a bad copy leaves."""
    damaged = bytearray(path.read_bytes())
    for at in (len(damaged) // 4, len(damaged) // 2, 3 * len(damaged) // 4):
        damaged[at] ^= 0xFF
    path.write_bytes(bytes(damaged))


def scored_rows_agree_with_the_log(home: Settings, engine: Engine, hour: datetime) -> int:
    """The hour's scored partition reads (its sha256 checked) and holds exactly the logged rows."""
    from pipelines.storage.lake import read_partition

    scored, _ = read_partition(home.lake, hour_partition("demo_churn", "scored", hour))
    p = tables.predictions
    with engine.connect() as connection:
        logged = connection.execute(
            select(p.c.entity_id, p.c.score).where(p.c.as_of >= hour, p.c.as_of < hour + timedelta(hours=1))
        ).all()
    assert sorted(logged) == sorted(zip(scored["customer_id"].astype(str), scored["score"], strict=True))
    return len(logged)


def test_a_truncated_manifest_is_named_and_the_rerun_rewrites_it(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.storage.lake import read_partition

    hour = FIRST_NIGHT + timedelta(hours=5)
    assert run("demo_churn__score", hour + timedelta(hours=1)).state == "success"
    manifest = lake_root(home) / hour_partition("demo_churn", "scored", hour) / "_manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    with pytest.raises(PartitionError, match=f"{re.escape(manifest.resolve().as_uri())}: not valid JSON .* damaged"):
        read_partition(home.lake, hour_partition("demo_churn", "scored", hour))  # what a reader meets
    before = records(engine)
    with caplog.at_level(logging.WARNING, logger="pipelines.stages.score"):
        assert run("demo_churn__score", hour + timedelta(hours=1)).state == "success"
    assert f"repaired the scored hour {hour.isoformat()}: {manifest.resolve().as_uri()}: not valid JSON" in caplog.text
    assert records(engine) == before  # the log is what served: not one row changed
    assert scored_rows_agree_with_the_log(home, engine, hour) > 0


def test_flipped_bytes_in_raw_and_scored_objects_are_repaired_by_the_rerun(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.storage.lake import read_partition

    hour = FIRST_NIGHT + timedelta(hours=10)
    assert run("demo_churn__score", hour + timedelta(hours=1)).state == "success"
    objects = {}
    for zone in ("raw", "scored"):
        manifest = json.loads(home.lake.get(f"{hour_partition('demo_churn', zone, hour)}/_manifest.json"))
        objects[zone] = lake_root(home) / manifest["data"]
        flip_bytes(objects[zone])
    with pytest.raises(
        PartitionError, match=f"it is rebuilt from its source {re.escape(str(source_file(home, hour)))}"
    ):
        read_partition(home.lake, hour_partition("demo_churn", "raw", hour))  # what training would meet
    before = records(engine)
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        assert run("demo_churn__score", hour + timedelta(hours=1)).state == "success"
    for zone in ("raw", "scored"):
        assert f"repaired {objects[zone].resolve().as_uri()}: its bytes did not match its address" in caplog.text
    assert f"repaired the scored hour {hour.isoformat()}" in caplog.text
    assert records(engine) == before
    read_partition(home.lake, hour_partition("demo_churn", "raw", hour))  # its sha256 matches again
    assert scored_rows_agree_with_the_log(home, engine, hour) > 0


def test_doctor_lists_where_lake_and_log_disagree_and_its_command_reconciles(home: Settings, engine: Engine) -> None:
    """A log restored from an older backup (an hour's rows gone) and a lake that lost an hour's
    scored partition: `pipelines doctor` names both, and the command it gives repairs each."""
    from pipelines.core.spec import load_spec
    from pipelines.views.doctor import Checkup, check_lake_and_log

    spec = load_spec(home.specs_dir / "demo_churn.yaml")
    lost_log, lost_lake = FIRST_NIGHT + timedelta(hours=11), FIRST_NIGHT + timedelta(hours=12)
    for hour in (lost_log, lost_lake):
        assert run("demo_churn__score", hour + timedelta(hours=1)).state == "success"
    kept = {hour: scored_rows_agree_with_the_log(home, engine, hour) for hour in (lost_log, lost_lake)}
    p = tables.predictions
    with engine.begin() as connection:
        connection.execute(p.delete().where(p.c.as_of >= lost_log, p.c.as_of < lost_log + timedelta(hours=1)))
    (lake_root(home) / hour_partition("demo_churn", "scored", lost_lake) / "_manifest.json").unlink()

    checkup = Checkup()
    check_lake_and_log(home, engine, spec, checkup)
    commands = {}
    for hour, lake_rows, log_rows in ((lost_log, kept[lost_log], 0), (lost_lake, 0, kept[lost_lake])):
        start, end = f"{hour:%Y-%m-%dT%H:%MZ}", f"{hour + timedelta(hours=1):%Y-%m-%dT%H:%MZ}"
        [problem] = [line for line in checkup.problems if f"hour {start}:" in line]
        assert f"{lake_rows} row(s) in the lake, {log_rows} in the log" in problem, problem
        commands[hour] = f"pipelines run demo_churn__score --start {start} --end {end}"
        assert f"`{commands[hour]}`" in problem
    assert len(checkup.problems) == 2, checkup.problems

    # The command given, as a user runs it; the other hour's in process (the same run, without the CLI's start-up).
    given = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *commands[lost_log].split()[1:]],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert given.returncode == 0, given.stdout[-2000:] + given.stderr[-2000:]
    assert run("demo_churn__score", lost_lake + timedelta(hours=1)).state == "success"
    for hour in (lost_log, lost_lake):
        assert scored_rows_agree_with_the_log(home, engine, hour) == kept[hour]
    checkup = Checkup()
    check_lake_and_log(home, engine, spec, checkup)
    assert checkup.problems == [] and "the lake and the log agree" in checkup.ok[0]


def test_a_source_overdue_for_an_old_interval_fails_at_its_first_check_naming_it(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The spec allows data 60 min past an interval's end; this interval ended months ago, so the
    sensor does not wait an hour for a file that will not come (as a backfill would)."""
    hour = FIRST_NIGHT + timedelta(hours=6)
    path = source_file(home, hour)
    path.unlink()
    with caplog.at_level(logging.INFO):
        dag_run = run("demo_churn__score", hour + timedelta(hours=1))
    sensor, ingest = task(dag_run, "wait_for_source"), task(dag_run, "ingest_interval")
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert sensor.state == "failed" and ingest.state == "upstream_failed", messages
    assert sensor.try_number == 1 and "is not ready" not in messages  # no retry, no wait
    assert f"still lacks 1 part(s), e.g. ['{path}']" in messages
    assert f"it was due by {(hour + timedelta(hours=2)).isoformat()}" in messages


def test_a_deleted_model_file_is_refused_naming_model_and_version(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.storage.registry import read_booster_file

    _, data, _ = read_booster_file(home, "demo_churn", "1")
    assert home.mlflow_artifacts is not None
    [booster] = list(home.mlflow_artifacts.rglob(Path(data).name))
    kept = booster.with_suffix(".kept")
    shutil.move(booster, kept)
    try:
        fails_at_once(
            home,
            engine,
            caplog,
            FIRST_NIGHT + timedelta(hours=7),
            "score",
            f"demo_churn v1: its model file '{data}' cannot be read",
        )
    finally:
        shutil.move(kept, booster)
    assert run("demo_churn__score", FIRST_NIGHT + timedelta(hours=8)).state == "success"  # restored, it serves


def test_scoring_and_monitoring_that_succeed_log_no_error(
    home: Settings, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from pipelines.airflow.dags import run_in_process

    hour = FIRST_NIGHT + timedelta(hours=9)
    logs_no_error(run("demo_churn__score", hour + timedelta(hours=1)), caplog, capfd)
    conf = {"interval_start": hour.isoformat(), "interval_end": (hour + timedelta(hours=1)).isoformat()}
    monitor = run_in_process("demo_churn__monitor", None, run_conf=conf, run_after=hour + timedelta(hours=1))
    logs_no_error(monitor, caplog, capfd)
