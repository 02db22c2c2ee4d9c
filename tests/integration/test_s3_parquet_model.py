"""Bring your own data on S3: hourly parquet files in a bucket (moto's server), a model added with
`pipelines new-model` and edits to its generated YAML only, then run train -> score -> monitor ->
backtest with `pipelines run`, across an hour whose producer wrote no file at all."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from pipelines.core.intervals import hours_between
from pipelines.core.spec import load_spec
from pipelines.dev.demo_data import DemoConfig, generate_hour
from pipelines.storage import tables
from pipelines.storage.lake import open_partition, s3_client
from pipelines.storage.settings import Settings
from tests import REPO_ROOT
from tests.conftest import S3Endpoint, module_home
from tests.integration.conftest import cli_output

MODEL = "bucket_churn"
CONNECTION = "shop_s3"
FIRST, LAST = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, 12, tzinfo=UTC)
QUIET = datetime(2026, 1, 3, 4, tzinfo=UTC)  # the producer wrote no file for this hour
EVENTS_PER_HOUR: dict[datetime, int] = {}


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bucket(s3_endpoint: S3Endpoint) -> str:
    """Events as one parquet file per hour; labels by arrival hour (6 h after their event)."""
    name = s3_endpoint.new_bucket()
    client = s3_client(s3_endpoint.options)
    for hour in hours_between(FIRST, LAST):
        if hour == QUIET:
            continue
        frame = generate_hour(DemoConfig(), hour)
        labels = frame[["customer_id", "event_time", "churned"]].assign(arrived_at=hour + timedelta(hours=6))
        client.put_object(
            Bucket=name, Key=f"events/{hour:%Y/%m/%d/%H}.parquet", Body=parquet(frame.drop(columns="churned"))
        )
        arrival = hour + timedelta(hours=6)
        client.put_object(Bucket=name, Key=f"labels/{arrival:%Y/%m/%d/%H}.parquet", Body=parquet(labels))
        EVENTS_PER_HOUR[hour] = len(frame)
    return name


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: S3Endpoint, bucket: str) -> Iterator[Settings]:
    with module_home(tmp_path_factory.mktemp("s3_model")) as settings, pytest.MonkeyPatch.context() as patch:
        # The connection the spec names, as a user defines one: an AIRFLOW_CONN_* variable.
        connection = {
            "conn_type": "aws",
            "login": s3_endpoint.options.access_key_id,
            "password": s3_endpoint.options.secret_access_key,
            "extra": {"endpoint_url": s3_endpoint.url, "region_name": "us-east-1"},
        }
        patch.setenv(f"AIRFLOW_CONN_{CONNECTION.upper()}", json.dumps(connection))
        yield settings


@pytest.fixture
def scaffolded() -> Iterator[str]:
    paths = [REPO_ROOT / "dags" / "models" / f"{MODEL}.yaml", REPO_ROOT / "dags" / f"{MODEL}.py"]
    paths.append(REPO_ROOT / "expectations" / f"{MODEL}.json")
    assert not any(p.exists() for p in paths), f"a {MODEL} model is already in the repository"
    try:
        yield MODEL
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def pipelines_run(dag_id: str, start: str, end: str) -> int:
    lines = [
        line
        for line in cli_output("run", dag_id, "--start", start, "--end", end).splitlines()
        if line.startswith(f"{dag_id}  ")
    ]
    assert lines and all("  success  " in line for line in lines), lines
    return len(lines)


def test_a_parquet_model_on_s3_added_with_new_model_runs_every_dag(
    home: Settings, engine: Engine, bucket: str, scaffolded: str
) -> None:
    cli_output(
        "new-model", scaffolded,
        "--events", f"s3://{bucket}/events/{{start:%Y/%m/%d/%H}}.parquet",
        "--labels", f"s3://{bucket}/labels/{{start:%Y/%m/%d/%H}}.parquet",
        "--s3-connection", CONNECTION,
        "--entity-key", "customer_id", "--timestamp", "event_time", "--label", "churned", "--arrived-at", "arrived_at",
        "--sample-start", "2026-01-01T00:00Z", "--sample-end", "2026-01-02T00:00Z",
    )  # fmt: skip
    spec_path = REPO_ROOT / "dags" / "models" / f"{scaffolded}.yaml"
    generated = load_spec(spec_path)
    assert generated.source.events.kind == "files" and generated.source.events.connection == CONNECTION
    assert generated.source.labels.when_missing == "empty"  # label feeds are sparse by nature
    assert set(generated.features.categorical) == {"plan", "region", "payment_method"}

    # The edits a person makes after reading the generated file's comments: this producer writes no
    # file for an hour without events, labels arrive after 6 h, and two days of history train.
    text = spec_path.read_text()
    events = {"kind": "files", "path": f"s3://{bucket}/events/{{start:%Y/%m/%d/%H}}.parquet", "connection": CONNECTION}
    edited = (
        text.replace(json.dumps(events), json.dumps({**events, "when_missing": "empty"}))
        .replace("delay_hours: 24", "delay_hours: 6")
        .replace("window_days: 7", "window_days: 2")
    )
    assert edited.count("when_missing") == 2 and "delay_hours: 6" in edited and "window_days: 2" in edited
    spec_path.write_text(edited)
    assert load_spec(spec_path).source.events.when_missing == "empty"

    # --start/--end bound the runs' data intervals: one nightly training, three hours, one backtest.
    assert pipelines_run(f"{scaffolded}__train", "2026-01-02T02:00Z", "2026-01-03T02:00Z") == 1
    assert pipelines_run(f"{scaffolded}__score", "2026-01-03T03:00Z", "2026-01-03T06:00Z") == 3
    assert pipelines_run(f"{scaffolded}__monitor", "2026-01-03T03:00Z", "2026-01-03T06:00Z") == 3
    assert pipelines_run(f"{scaffolded}__backtest", "2026-01-03T04:00Z", "2026-01-04T04:00Z") == 1

    scored = {
        hour: open_partition(home.lake, f"{scaffolded}/scored/dt=2026-01-03/hour={hour:02d}").rows for hour in (3, 4, 5)
    }
    expected = {h: EVENTS_PER_HOUR.get(datetime(2026, 1, 3, h, tzinfo=UTC), 0) for h in (3, 4, 5)}
    assert scored == expected and scored[4] == 0 and scored[3] > 0
    with engine.connect() as db:
        logged = db.execute(
            select(func.count()).select_from(tables.predictions).where(tables.predictions.c.model_name == scaffolded)
        ).scalar_one()
        reports = db.execute(
            select(tables.drift_reports.c.current_rows).where(tables.drift_reports.c.model_name == scaffolded)
        ).all()
        b = tables.current_backtest(scaffolded, slice_column="ALL")
        backtested = db.execute(select(func.sum(b.c.n)).where(b.c.scored_by == "logged")).scalar_one()
    assert logged == sum(expected.values())
    assert sorted(r.current_rows for r in reports) == sorted(expected.values())
    assert backtested == sum(expected.values())  # every scored event's label had arrived by 01-04 04:00
