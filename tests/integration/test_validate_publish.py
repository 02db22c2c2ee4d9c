"""Validate, then publish, per policy: real GX checkpoints on staged deliveries, a real lake, and the
validation record on SQLite and on the PostgreSQL server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, select

from pipelines.core.errors import ValidationFailedError
from pipelines.core.spec import ModelSpec, load_spec
from pipelines.dev.demo_data import DemoConfig, write_source
from pipelines.stages.ingest import ingest
from pipelines.stages.validate import ValidationOutcome, validate_and_publish
from pipelines.storage import database, tables
from pipelines.storage.lake import hour_partition, open_partition, read_object, read_partition
from pipelines.storage.settings import Settings
from pipelines.storage.sources import SourceAccess
from tests import REPO_ROOT
from tests.conftest import module_home, postgres_database

START = datetime(2026, 1, 2, 10, tzinfo=UTC)
HOURS = [START, START + timedelta(hours=1)]  # 10:00 clean, 11:00 with three bad rows


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Settings]:
    with module_home(tmp_path) as settings:
        write_source(settings.source / "demo_churn", DemoConfig(), START, START + timedelta(hours=2))
        yield settings


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(home: Settings, request: pytest.FixtureRequest) -> Iterator[Engine]:
    with ExitStack() as stack:
        url = home.tables_url
        if request.param == "postgresql":
            url = stack.enter_context(postgres_database("pipelines_validate"))
            database.upgrade_schema(url)
        engine = database.make_engine(url)
        yield engine
        engine.dispose()


def spec_with(policy: str) -> ModelSpec:
    return load_spec(REPO_ROOT / "dags" / "models" / "demo_churn.yaml").model_copy(update={"validation_policy": policy})


def spoil(home: Settings, hour: datetime, rows: int) -> None:
    path = home.source / "demo_churn" / "events" / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}.csv"
    frame = pd.read_csv(path, dtype=str)
    frame.loc[: rows - 1, "plan"] = "platinum_legacy"
    frame.to_csv(path, index=False)


def stage_and_validate(spec: ModelSpec, home: Settings, engine: Engine) -> ValidationOutcome:
    staged = ingest(spec, SourceAccess(home.source), home.lake, START, START + timedelta(hours=2))
    return validate_and_publish(
        spec, home, engine, staged, START, START + timedelta(hours=2), dag_id="d", dag_run_id="r"
    )


def validation_row(engine: Engine) -> dict[str, object]:
    with engine.connect() as connection:
        return dict(connection.execute(select(tables.validation_runs)).mappings().one())


def test_quarantine_keeps_bad_rows_aside_and_publishes_the_rest(home: Settings, engine: Engine) -> None:
    spoil(home, HOURS[1], 3)
    outcome = stage_and_validate(spec_with("quarantine"), home, engine)
    clean, _ = read_partition(home.lake, hour_partition("demo_churn", "raw", HOURS[0]))
    kept, published = read_partition(home.lake, hour_partition("demo_churn", "raw", HOURS[1]))
    source = pd.read_csv(home.source / "demo_churn" / "events" / "dt=2026-01-02" / "hour=11.csv")
    assert "platinum_legacy" not in set(kept["plan"]) and len(kept) == len(source) - 3
    assert published.manifest["quarantined_rows"] == 3 and len(clean) > 0
    row = validation_row(engine)
    assert row["success"] is False and row["rows_quarantined"] == 3 == outcome.rows_quarantined
    assert row["rows_checked"] == len(clean) + len(source)
    (uri,) = json.loads(str(row["quarantine_uri"]))
    key = uri.removeprefix(home.lake.uri_of("").rstrip("/") + "/").replace("%3D", "=")
    aside, partition = read_partition(home.lake, key)
    assert list(aside["plan"]) == ["platinum_legacy"] * 3
    assert partition.manifest["validation_result"] == row["result_path"]


def test_quarantine_sets_aside_a_value_that_is_no_number_and_a_copied_row(home: Settings, engine: Engine) -> None:
    """Under quarantine a row fault ingest can isolate costs that row, not the hour: the row whose
    monthly_charges is text goes aside naming column and value; of a row sent twice one copy stays."""
    path = home.source / "demo_churn" / "events" / "dt=2026-01-02" / "hour=11.csv"
    frame = pd.read_csv(path, dtype=str)
    original = len(frame)
    frame.loc[5, "monthly_charges"] = "twelve"
    pd.concat([frame, frame.iloc[[0]]], ignore_index=True).to_csv(path, index=False)
    outcome = stage_and_validate(spec_with("quarantine"), home, engine)
    kept, published = read_partition(home.lake, hour_partition("demo_churn", "raw", HOURS[1]))
    assert len(kept) == original - 1 and published.manifest["quarantined_rows"] == 2
    assert kept["customer_id"].tolist().count(frame.loc[0, "customer_id"]) == 1
    row = validation_row(engine)
    assert row["success"] is False and row["rows_quarantined"] == 2 == outcome.rows_quarantined
    failed = " ".join(json.loads(str(row["failed_expectations"])))
    assert "rows_set_aside_at_ingest failed (2 unexpected)" in failed
    assert "column 'monthly_charges' holds a value that is not a number: 'twelve'" in failed
    assert "an exact copy of an earlier row" in failed
    (uri,) = json.loads(str(row["quarantine_uri"]))
    key = uri.removeprefix(home.lake.uri_of("").rstrip("/") + "/").replace("%3D", "=")
    aside, _ = read_partition(home.lake, key)
    assert sorted(aside["set_aside_because"]) == [
        "an exact copy of an earlier row",
        "column 'monthly_charges' holds a value that is not a number: 'twelve'",
    ]


def test_block_publishes_nothing_of_a_bad_delivery(home: Settings, engine: Engine) -> None:
    spec = spec_with("block")
    stage_and_validate(spec, home, engine)  # a clean first delivery of both hours
    before = [open_partition(home.lake, hour_partition("demo_churn", "raw", h)).manifest for h in HOURS]
    spoil(home, HOURS[1], 3)
    with pytest.raises(
        ValidationFailedError, match=r"expect_column_values_to_be_in_set on column 'plan' failed \(3 unexpected\)"
    ) as failed:
        stage_and_validate(spec, home, engine)
    # What to do: the bound, what the failing hour showed, and the edit or command that accepts it.
    message = str(failed.value)
    assert "    expectation 13 allowed 3 values, mostly 1.0\n" in message
    hour = HOURS[1].isoformat()
    assert f"    observed values outside the set: ['platinum_legacy'] in the partition starting {hour}\n" in message
    assert (
        '    to accept: set {"value_set": ["basic", "platinum_legacy", "premium", "standard"]} in expectation 13 '
        f"(expect_column_values_to_be_in_set, counting from 1) of {REPO_ROOT / 'expectations' / 'demo_churn.json'}, or run "
        f"`pipelines suite demo_churn --start {START.isoformat()} --end {(START + timedelta(hours=2)).isoformat()} --accept`"
    ) in message
    assert message.count("held back: ") == 1 and f"held back: {hour} from " in message
    after = [open_partition(home.lake, hour_partition("demo_churn", "raw", h)).manifest for h in HOURS]
    assert after == before  # the bad re-delivery did not replace the good partition
    row = validation_row(engine)
    (uri,) = json.loads(str(row["quarantine_uri"]))
    key = uri.removeprefix(home.lake.uri_of("").rstrip("/") + "/").replace("%3D", "=")
    record = json.loads(home.lake.get(f"{key}/_manifest.json"))
    assert record["validation_result"] == row["result_path"] and record["sha256"] != before[1]["sha256"]
    assert (read_object(home.lake, record, "the quarantined delivery")["plan"] == "platinum_legacy").sum() == 3
    assert row["rows_quarantined"] == record["rows"]


def test_a_missing_column_cannot_be_split_and_blocks_under_quarantine(home: Settings, engine: Engine) -> None:
    path = home.source / "demo_churn" / "events" / "dt=2026-01-02" / "hour=11.csv"
    pd.read_csv(path).drop(columns=["region"]).to_csv(path, index=False)
    # Batched with 10:00, which has the column, the gap would read as nulls: each delivery is checked.
    with pytest.raises(
        ValidationFailedError,
        match=r"columns_present_in_every_delivery on column 'region' failed, e.g. \['.*hour=11.csv'\]",
    ):
        stage_and_validate(spec_with("quarantine"), home, engine)
    assert not home.lake.exists(f"{hour_partition('demo_churn', 'raw', HOURS[1])}/_manifest.json")


def test_gx_keeps_a_bounded_store_and_data_docs_are_built_off_the_hourly_path(
    home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.stages.validate as validate

    gx_root = tmp_path / "gx"  # a GX project of its own: the session's is shared by every test
    monkeypatch.setattr(validate, "GX_RESULTS_KEPT", 2)
    spec = spec_with("block")
    frame = read_object(home.lake, ingest(spec, SourceAccess(home.source), home.lake, START, HOURS[1])[0], "staged")
    site = gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    for run in range(4):
        outcome = validate.validate_frame(
            frame, spec.suite_path, gx_root, lake=home.lake, result_key=f"r/{run}.json", run_name=f"hourly {run}"
        )
        assert outcome.success and home.lake.exists(f"r/{run}.json")  # the lake keeps every result
    stored = sorted(validate.gx_results_dir(gx_root).rglob("*.json"))
    assert len(stored) == 2 and all("hourly 3" in p.read_text() or "hourly 2" in p.read_text() for p in stored)
    assert not site.exists(), "an hourly validation does not rebuild Data Docs"
    nightly = validate.validate_frame(
        frame, spec.suite_path, gx_root, lake=home.lake, result_key="r/n.json", run_name="nightly", data_docs=True
    )
    assert site.exists() and nightly.data_docs_path.endswith("index.html")
    assert "nightly" in site.read_text() or any("nightly" in p.read_text() for p in site.parent.rglob("*.html"))
