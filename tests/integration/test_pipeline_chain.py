"""The whole chain through real Airflow runs (`dag.test()`), real GX, MLflow, XGBoost and Evidently.

One timeline, in order: the source holds four days; hour 2026-01-03 10:00 is corrupted by the
generator's bad-data knob. Tests in this module run in file order and build on each other.

The module runs twice: on the embedded defaults (a local lake, SQLite tables) and on the
scale-out storage (the lake on S3, served by moto's server over HTTP, and the tables on the
PostgreSQL server), both reached through Airflow connections as a deployment would.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd
import pytest
from sqlalchemy import Engine, func, make_url, select

from pipelines.core.errors import BadDataError, PermanentError
from pipelines.dev.demo_data import DemoConfig, write_source
from pipelines.storage import database, tables
from pipelines.storage.database import upgrade_schema
from pipelines.storage.lake import LocalLake, hour_partition, open_lake, open_partition
from pipelines.storage.settings import Settings
from tests.conftest import S3Endpoint, module_home, postgres_database
from tests.integration.conftest import status_report

UTC = UTC
BAD_HOUR = datetime(2026, 1, 3, 10, tzinfo=UTC)
FIRST_NIGHT = datetime(2026, 1, 3, 2, tzinfo=UTC)  # train run: window [01-01 02:00, 01-03 02:00)
SCORED_HOURS = [FIRST_NIGHT + timedelta(hours=h) for h in range(3)]  # 02:00, 03:00, 04:00


@pytest.fixture(scope="module", params=["local-sqlite", "s3-postgresql"])
def home(
    request: pytest.FixtureRequest, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("chain")
    with ExitStack() as stack:
        settings = stack.enter_context(module_home(root))
        if request.param == "s3-postgresql":
            endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
            url = stack.enter_context(postgres_database("pipelines_chain"))
            upgrade_schema(url)
            patch = stack.enter_context(pytest.MonkeyPatch.context())
            lake_uri = f"s3://{endpoint.new_bucket()}/lake"
            patch.setenv("PIPELINES_LAKE", lake_uri)
            # Tasks find their storage through Airflow connections, as in a deployment; the variable
            # below still names the SQLite default, so a task that ignored the connection would miss.
            patch.setenv(
                "AIRFLOW_CONN_PIPELINES_TABLES", make_url(url).set(drivername="postgres").render_as_string(False)
            )
            patch.setenv(
                "AIRFLOW_CONN_PIPELINES_LAKE",
                json.dumps(
                    {
                        "conn_type": "aws",
                        "login": endpoint.options.access_key_id,
                        "password": endpoint.options.secret_access_key,
                        "extra": {"endpoint_url": endpoint.url, "region_name": "us-east-1"},
                    }
                ),
            )
            # What the tests themselves read: the same storage, with the endpoint's credentials.
            settings = replace(settings, lake=open_lake(lake_uri, endpoint.options), tables_url=url)
        write_source(
            settings.source / "demo_churn",
            DemoConfig(bad_hours=frozenset({BAD_HOUR})),
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 4, 12, tzinfo=UTC),
        )
        yield settings


def run(dag_id: str, logical_date: datetime) -> Any:
    from pipelines.airflow.dags import run_in_process

    return run_in_process(dag_id, logical_date)


def task_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def predictions_digest(engine: Engine) -> tuple[int, str]:
    p = tables.predictions
    with engine.connect() as connection:
        rows = connection.execute(select(p).order_by(p.c.entity_id, p.c.as_of)).all()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def champion(settings: Settings) -> str | None:
    from pipelines.storage.registry import champion_version

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
    (dataset,) = [d.dataset for d in mlflow_run.inputs.dataset_inputs]
    # A sample is logged, under the digest of the whole snapshot the run trained on.
    assert dataset.name == "demo_churn-training-sample" and tags["data_sha256"].startswith(dataset.digest)
    assert json.loads(dataset.profile)["num_rows"] == 1000

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


def lake_object(home: Settings, uri: str) -> bytes:
    """Read an object the pipeline reported by URI, from whichever lake this module runs on."""
    prefix = home.lake.uri_of("").rstrip("/") + "/"
    assert uri.startswith(prefix), f"{uri} is not in the lake {prefix}"
    return home.lake.get(unquote(uri.removeprefix(prefix)))  # a file:// URI escapes '=' in dt=…/hour=…


def per_hour_counts(engine: Engine) -> dict[str, int]:
    p = tables.predictions
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(select(p.c.as_of)).all(), columns=["as_of"])
    hours = pd.to_datetime(frame["as_of"], utc=True).dt.floor("h").dt.strftime("%H:%M")
    return hours.value_counts().sort_index().to_dict()


def demo_spec(home: Settings) -> Any:
    from pipelines.core.spec import load_spec

    return load_spec(home.specs_dir / "demo_churn.yaml")


def test_scoring_logs_every_row_of_the_interval(home: Settings, engine: Engine) -> None:
    for hour in SCORED_HOURS:
        dag_run = run("demo_churn__score", hour + timedelta(hours=1))
        assert dag_run.state == "success", task_states(dag_run)
    expected = sum(open_partition(home.lake, hour_partition("demo_churn", "raw", h)).rows for h in SCORED_HOURS)
    p = tables.predictions
    with engine.connect() as connection:
        rows = connection.execute(select(p.c.model_version, p.c.as_of, p.c.score, p.c.unseen_categories)).all()
    assert len(rows) == expected > 0
    if engine.dialect.name == "postgresql":  # written through the Airflow connection, not the URL variable
        assert tables.count_rows(database.make_engine(os.environ["PIPELINES_TABLES_URL"]), p, "demo_churn") == 0
    assert {r.model_version for r in rows} == {"1"}
    assert all(0.0 <= r.score <= 1.0 for r in rows)
    assert {r.unseen_categories for r in rows} <= {0, 1, 2, 3}
    as_of = pd.to_datetime(pd.Series([r.as_of for r in rows]), utc=True)
    assert as_of.min() >= SCORED_HOURS[0] and as_of.max() < SCORED_HOURS[-1] + timedelta(hours=1)
    for hour in SCORED_HOURS:
        manifest = open_partition(home.lake, hour_partition("demo_churn", "scored", hour)).manifest
        assert manifest["model_version"] == "1"
        assert set(manifest["unseen_categories"]) == {"plan", "region", "payment_method"}


def test_backfilling_three_intervals_again_changes_nothing(home: Settings, engine: Engine) -> None:
    before, counts = predictions_digest(engine), per_hour_counts(engine)
    lake_before = [open_partition(home.lake, hour_partition("demo_churn", "scored", h)).sha256 for h in SCORED_HOURS]
    assert list(counts) == ["02:00", "03:00", "04:00"]
    for hour in SCORED_HOURS:
        dag_run = run("demo_churn__score", hour + timedelta(hours=1))
        assert dag_run.state == "success", task_states(dag_run)
        assert dag_run.run_id == f"manual__{hour + timedelta(hours=1):%Y-%m-%dT%H:%M:%S}+00:00"  # same run, re-run
    assert per_hour_counts(engine) == counts
    assert predictions_digest(engine) == before  # count and checksum of every column of every row
    assert [
        open_partition(home.lake, hour_partition("demo_churn", "scored", h)).sha256 for h in SCORED_HOURS
    ] == lake_before


def test_logged_inputs_replay_to_the_logged_scores_bit_for_bit(home: Settings, engine: Engine) -> None:
    from pipelines.stages.prediction_log import read_logged_inputs
    from pipelines.stages.score import replay_logged_inputs

    logged = read_logged_inputs(demo_spec(home), home, SCORED_HOURS)
    assert logged.partitions_found == 3 and not logged.partitions_missing
    scores = replay_logged_inputs(demo_spec(home), home, "1", logged.frame)
    assert (scores["score"] == scores["logged_score"]).all()
    p = tables.predictions
    with engine.connect() as connection:
        logged = pd.DataFrame(
            connection.execute(select(p.c.entity_id, p.c.as_of, p.c.score)).all(), columns=["entity_id", "as_of", "db"]
        )
    logged["as_of"] = pd.to_datetime(logged["as_of"], utc=True)
    replayed = scores.astype({"entity_id": str})
    joined = replayed.merge(logged, on=["entity_id", "as_of"], validate="one_to_one")
    assert len(joined) == len(logged) and (joined["score"] == joined["db"]).all()


def test_scoring_refuses_inputs_that_break_the_signature(home: Settings) -> None:
    from pipelines.core.features import ContractError
    from pipelines.stages.score import check_inputs
    from pipelines.storage.lake import read_partition
    from pipelines.storage.registry import load_model

    signature = load_model(home, "demo_churn", "1").signature
    frame, _ = read_partition(home.lake, hour_partition("demo_churn", "raw", SCORED_HOURS[0]))
    check_inputs(frame, signature, "demo_churn v1")  # the real inputs pass
    with pytest.raises(ContractError, match=r"input column 'support_calls' \(double\) is missing"):
        check_inputs(frame.drop(columns=["support_calls"]), signature, "demo_churn v1")
    changed = frame.assign(monthly_charges=frame["monthly_charges"].astype("string"))
    with pytest.raises(ContractError, match=r"'monthly_charges' changed type: the model was trained on double"):
        check_inputs(changed, signature, "demo_churn v1")
    with pytest.raises(ContractError, match=r"'plan' changed type: the model was trained on string"):
        check_inputs(frame.assign(plan=1.0), signature, "demo_churn v1")


def fail_prediction_writes(engine: Engine) -> None:
    """A real database failure after the lake's object is written: a trigger refuses inserted predictions.
    On PostgreSQL it fires at commit, after a new hour's chunks were stored; SQLite has no deferred
    triggers, and its failed insert sends the hour down the merge path, which stores the object first."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_predictions BEFORE INSERT ON predictions "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_predictions() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
            )
            connection.exec_driver_sql(
                "CREATE CONSTRAINT TRIGGER refuse_predictions AFTER INSERT ON predictions "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_predictions()"
            )


def allow_prediction_writes(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("DROP TRIGGER refuse_predictions")
        else:
            connection.exec_driver_sql("DROP TRIGGER refuse_predictions ON predictions")
            connection.exec_driver_sql("DROP FUNCTION refuse_predictions()")


def test_a_failed_log_write_publishes_nothing_then_a_retry_converges(home: Settings, engine: Engine) -> None:
    hour = SCORED_HOURS[-1] + timedelta(hours=1)  # 05:00, never scored yet
    key = hour_partition("demo_churn", "scored", hour)
    before = predictions_digest(engine)
    fail_prediction_writes(engine)
    try:
        dag_run = run("demo_churn__score", hour + timedelta(hours=1))
    finally:
        allow_prediction_writes(engine)
    assert dag_run.state == "failed" and task_states(dag_run)["score"] == "failed"
    # The lake never shows what the log lacks: neither holds the hour, and nothing else moved.
    assert not home.lake.exists(f"{key}/_manifest.json")
    assert predictions_digest(engine) == before

    dag_run = run("demo_churn__score", hour + timedelta(hours=1))  # the retry
    assert dag_run.state == "success", task_states(dag_run)
    from pipelines.storage.lake import read_partition

    scored, partition = read_partition(home.lake, key)
    p = tables.predictions
    with engine.connect() as connection:
        logged = pd.DataFrame(
            connection.execute(
                select(p.c.entity_id, p.c.as_of, p.c.score, p.c.features_sha256).where(p.c.as_of >= hour)
            ).all(),
            columns=["entity_id", "as_of", "score", "features_sha256"],
        )
    assert len(logged) == partition.rows == len(scored)
    logged["as_of"] = pd.to_datetime(logged["as_of"], utc=True)
    joined = scored.astype({"customer_id": str}).merge(
        logged, left_on=["customer_id", "event_time"], right_on=["entity_id", "as_of"], validate="one_to_one"
    )
    assert len(joined) == len(scored)
    assert (joined["score_x"] == joined["score_y"]).all()
    assert (joined["features_sha256_x"] == joined["features_sha256_y"]).all()


def test_rows_filed_under_another_hour_are_refused(home: Settings, engine: Engine) -> None:
    from pipelines.stages.score import score_interval
    from pipelines.storage.lake import read_partition, write_partition

    evening = datetime(2026, 1, 3, 20, tzinfo=UTC)
    frame, _ = read_partition(home.lake, hour_partition("demo_churn", "raw", SCORED_HOURS[0]))
    write_partition(home.lake, hour_partition("demo_churn", "raw", evening), frame, {"model": "demo_churn"})
    before = predictions_digest(engine)
    with pytest.raises(BadDataError, match=rf"{len(frame)} row\(s\) of the partition for 2026-01-03T20:00:00\+00:00"):
        score_interval(demo_spec(home), home, engine, evening, evening + timedelta(hours=1), dag_run_id="test")
    assert predictions_digest(engine) == before
    assert not home.lake.exists(f"{hour_partition('demo_churn', 'scored', evening)}/_manifest.json")


def test_bad_data_fails_validation_and_scores_nothing(home: Settings, engine: Engine) -> None:
    before = predictions_digest(engine)
    dag_run = run("demo_churn__score", BAD_HOUR + timedelta(hours=1))
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["validate_interval"] == "failed"
    assert states["score"] == "upstream_failed"
    assert predictions_digest(engine) == before

    v = tables.validation_runs
    with engine.connect() as connection:
        row = connection.execute(select(v).where(v.c.interval_start == BAD_HOUR)).mappings().one()
    assert row["success"] is False
    failed = " ".join(json.loads(row["failed_expectations"]))
    assert "expect_column_values_to_not_be_null on column 'customer_id'" in failed
    assert "monthly_charges" in failed and "-999.0" in failed and "platinum_legacy" in failed
    assert json.loads(lake_object(home, row["result_path"]))["success"] is False


BACKTEST_RUN = datetime(2026, 1, 4, 4, tzinfo=UTC)  # interval [01-03 04:00, 01-04 04:00)


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def backtest_rows(engine: Engine) -> list[dict[str, Any]]:
    b = tables.backtest_metrics
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(b)).mappings()]


def test_backtest_uses_matured_labels_only(home: Settings, engine: Engine) -> None:
    # Labels of the scored hours (02:00..05:00 on 01-03) arrive 08:00..12:00 on 01-03.
    dag_run = run("demo_churn__backtest", BACKTEST_RUN)
    assert dag_run.state == "success", task_states(dag_run)
    rows = backtest_rows(engine)
    with engine.connect() as connection:
        predicted = connection.execute(select(tables.predictions.c.entity_id)).all()
    whole = [r for r in rows if r["slice_column"] == "ALL"]
    assert [(r["cohort"], r["model_version"], r["scored_by"]) for r in whole] == [("2026-01-03", "1", "logged")]
    assert whole[0]["n"] == len(predicted)
    assert whole[0]["auc"] > 0.7
    # Per slice (spec backtest.slices: plan, region): every row lands in exactly one value of each.
    for column in ("plan", "region"):
        values = [r for r in rows if r["slice_column"] == column]
        assert len(values) >= 2 and sum(r["n"] for r in values) == whole[0]["n"]


def test_backtest_keeps_a_plot_and_an_mlflow_run(home: Settings, engine: Engine) -> None:
    from mlflow import MlflowClient

    png = home.lake.get(f"demo_churn/reports/backtest/{BACKTEST_RUN:%Y-%m-%dT%H%M}.png")
    assert png.startswith(b"\x89PNG") and len(png) > 5_000
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name("pipelines/demo_churn").experiment_id], "tags.kind = 'backtest'"
    )
    assert len(runs) == 1
    assert runs[0].data.metrics["logged.v1.auc"] > 0.7
    whole = [r for r in backtest_rows(engine) if r["slice_column"] == "ALL"]
    assert runs[0].data.metrics["logged.v1.n"] == whole[0]["n"]
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "backtest")}
    assert artifacts == {"backtest/backtest.png", "backtest/backtest_metrics.json"}


def test_labels_and_backtest_rerun_change_nothing(home: Settings, engine: Engine) -> None:
    with engine.connect() as connection:
        labels_before = connection.execute(select(tables.labels).order_by(tables.labels.c.entity_id)).all()
    metrics_before = backtest_rows(engine)
    dag_run = run("demo_churn__backtest", BACKTEST_RUN)
    assert dag_run.state == "success", task_states(dag_run)
    with engine.connect() as connection:
        assert connection.execute(select(tables.labels).order_by(tables.labels.c.entity_id)).all() == labels_before
    assert backtest_rows(engine) == metrics_before
    assert all(r.arrived_at is not None for r in labels_before)


def test_backtest_has_no_look_ahead(home: Settings, engine: Engine) -> None:
    from pipelines.stages.backtest import cohort_predictions, labelled

    spec = demo_spec(home)
    # Labels of the 02:00 hour arrive at 08:00: a backtest up to 08:00 knows none of them, one up to
    # 09:00 knows exactly that hour, though the labels table already holds later arrivals.
    assert labelled(cohort_predictions(spec, engine, datetime(2026, 1, 3, 8, tzinfo=UTC))).empty
    early = labelled(cohort_predictions(spec, engine, datetime(2026, 1, 3, 9, tzinfo=UTC)))
    assert len(early) > 0
    assert early["as_of"].min() >= SCORED_HOURS[0] and early["as_of"].max() < SCORED_HOURS[1]


def test_challenger_replays_the_logged_inputs_next_to_the_champion(home: Settings, engine: Engine) -> None:
    # A dry-run training registers v2 as challenger and leaves v1 serving.
    from pipelines.airflow.dags import run_in_process

    dag_run = run_in_process("demo_churn__train", FIRST_NIGHT + timedelta(hours=1), run_conf={"dry_run": True})
    assert dag_run.state == "success", task_states(dag_run)
    assert champion(home) == "1"
    dag_run = run("demo_churn__backtest", BACKTEST_RUN)
    assert dag_run.state == "success", task_states(dag_run)
    whole = {(r["model_version"], r["scored_by"]): r for r in backtest_rows(engine) if r["slice_column"] == "ALL"}
    assert set(whole) == {("1", "logged"), ("2", "replay")}
    # The challenger scored the very rows the champion scored (4 matured hours, fewer than replay_intervals).
    assert whole[("2", "replay")]["n"] == whole[("1", "logged")]["n"]
    assert whole[("2", "replay")]["auc"] > 0.7
    replayed = [r for r in backtest_rows(engine) if r["scored_by"] == "replay" and r["slice_column"] == "plan"]
    assert sum(r["n"] for r in replayed) == whole[("2", "replay")]["n"]
    # The replayed scores are kept in the lake, and only cover rows newer than v2's training data.
    from pipelines.storage.lake import read_partition
    from pipelines.storage.registry import fresh_from

    scores, partition = read_partition(home.lake, "demo_churn/replay/v2/20251228T0400--20260104T0400")
    assert partition.manifest["model_version"] == "2" and len(scores) >= whole[("2", "replay")]["n"]
    since = fresh_from(home, "demo_churn", "2")
    assert since is not None and datetime(2026, 1, 2, tzinfo=UTC) < since < SCORED_HOURS[0]
    assert scores["as_of"].min() >= since


def test_training_over_a_bad_window_is_blocked_and_keeps_the_champion(home: Settings, engine: Engine) -> None:
    dag_run = run("demo_churn__train", FIRST_NIGHT + timedelta(days=1))  # window holds the bad hour
    assert dag_run.state == "failed"
    states = task_states(dag_run)
    assert states["validate_window"] == "failed" and states["train"] == "upstream_failed"
    assert champion(home) == "1"


def test_status_cli_reports_the_state(home: Settings) -> None:
    model = status_report(home.tables_url)["models"][0]
    assert model["model"] == "demo_churn" and model["champion_version"] == "1"
    assert model["predictions_last_24h"] > 0 and model["labels_last_24h"] > 0 and model["backtest_metrics"] > 2
    assert model["latest_prediction_as_of"].startswith("2026-01-0")
    assert {(b["model_version"], b["scored_by"]) for b in model["latest_backtest"]} == {
        ("1", "logged"),
        ("2", "replay"),
    }
    assert model["last_validation"]["success"] is False  # the blocked training window


def xcom(dag_run: Any, task_id: str) -> Any:
    """What a task of a finished DAG run returned, from Airflow's own database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value")
        ).one()
        return XComModel.deserialize_value(row)


def test_a_bad_delivery_is_kept_aside_and_every_snapshot_stays_readable(home: Settings, engine: Engine) -> None:
    from mlflow import MlflowClient

    from pipelines.storage.lake import read_object

    hour = SCORED_HOURS[0]  # published, scored, and named by the training snapshots
    key = hour_partition("demo_churn", "raw", hour)
    published = home.lake.get(f"{key}/_manifest.json")
    source = home.source / "demo_churn" / "events" / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}.csv"
    original = source.read_bytes()
    frame = pd.read_csv(source, dtype=str)
    frame.loc[:4, "plan"] = "platinum_legacy"  # a re-delivery with five bad rows
    frame.to_csv(source, index=False)
    before = predictions_digest(engine)
    try:
        dag_run = run("demo_churn__score", hour + timedelta(hours=1))
    finally:
        source.write_bytes(original)
    assert dag_run.state == "failed" and task_states(dag_run)["validate_interval"] == "failed"
    assert home.lake.get(f"{key}/_manifest.json") == published  # the good partition is still the current one
    assert predictions_digest(engine) == before

    v = tables.validation_runs
    with engine.connect() as connection:
        row = (
            connection.execute(select(v).where(v.c.interval_start == hour, v.c.dag_id == "demo_churn__score"))
            .mappings()
            .one()
        )
    assert row["success"] is False and row["rows_checked"] == row["rows_quarantined"] == len(frame)
    (quarantined,) = json.loads(row["quarantine_uri"])
    kept = json.loads(lake_object(home, f"{quarantined}/_manifest.json"))
    assert kept["validation_result"] == row["result_path"] and kept["sha256"] != json.loads(published)["sha256"]
    assert (read_object(home.lake, kept, "the quarantined delivery")["plan"] == "platinum_legacy").sum() == 5

    # Every snapshot a registered version was trained on re-reads bit for bit.
    snapshots = {v.tags["data_uri"] for v in MlflowClient().search_model_versions("name = 'demo_churn'")}
    for uri in snapshots:
        for part in json.loads(lake_object(home, uri))["partitions"]:
            payload = home.lake.get(part["data"])
            assert hashlib.sha256(payload).hexdigest() == part["sha256"], part


def test_after_a_promotion_a_rerun_keeps_what_served(home: Settings, engine: Engine) -> None:
    from pipelines.airflow.dags import run_in_process
    from pipelines.storage.registry import CHAMPION, move_alias

    def scored_manifests() -> list[bytes]:
        return [home.lake.get(f"{hour_partition('demo_churn', 'scored', h)}/_manifest.json") for h in SCORED_HOURS]

    move_alias(home, engine, "demo_churn", CHAMPION, "2", reason="test: v2 promoted", dag_run_id=None, actor="test")
    try:
        before, lake_before = predictions_digest(engine), scored_manifests()
        for hour in SCORED_HOURS:
            dag_run = run("demo_churn__score", hour + timedelta(hours=1))
            assert dag_run.state == "success", task_states(dag_run)
            assert xcom(dag_run, "score")["model_version"] == "1"  # the version that served, not the champion
        assert predictions_digest(engine) == before and scored_manifests() == lake_before

        # Re-scoring with the champion is an explicit choice; v1's rows move to the history, whole.
        hour = SCORED_HOURS[0]
        logical = hour + timedelta(hours=1)
        rescore = run_in_process(
            "demo_churn__score", logical, {"rescore_with": "champion"}, logical + timedelta(minutes=5)
        )
        assert rescore.state == "success", task_states(rescore)
        p, h = tables.predictions, tables.predictions_history
        in_hour = (p.c.as_of >= hour) & (p.c.as_of < logical)
        with engine.connect() as connection:
            now = connection.execute(
                select(p.c.model_version, func.count()).where(in_hour).group_by(p.c.model_version)
            ).all()
            kept = connection.execute(
                select(h.c.model_version, h.c.superseded_by_run, func.count())
                .where(h.c.as_of >= hour, h.c.as_of < logical)
                .group_by(h.c.model_version, h.c.superseded_by_run)
            ).all()
        rows = open_partition(home.lake, hour_partition("demo_churn", "raw", hour)).rows
        assert now == [("2", rows)] and kept == [("1", rescore.run_id, rows)]
        earlier = json.loads(lake_before[0])
        assert home.lake.exists(
            f"demo_churn/scored_history/dt={hour:%Y-%m-%d}/hour={hour:%H}/{earlier['sha256']}/_manifest.json"
        )
        assert home.lake.exists(earlier["data"])  # v1's scored inputs are still readable

        after = predictions_digest(engine), tables.count_rows(engine, h, "demo_churn")
        again = run_in_process(
            "demo_churn__score", logical, {"rescore_with": "champion"}, logical + timedelta(minutes=5)
        )
        assert (
            again.state == "success"
            and (predictions_digest(engine), tables.count_rows(engine, h, "demo_churn")) == after
        )
    finally:
        move_alias(home, engine, "demo_churn", CHAMPION, "1", reason="test: back to v1", dag_run_id=None, actor="test")


def test_a_lake_that_lost_the_hour_still_cannot_rewrite_the_log(home: Settings, engine: Engine, tmp_path: Path) -> None:
    from pipelines.core.errors import RecordConflictError
    from pipelines.stages.score import score_interval
    from pipelines.storage.lake import read_partition, write_partition

    hour = SCORED_HOURS[1]
    raw, _ = read_partition(home.lake, hour_partition("demo_churn", "raw", hour))
    moved = replace(home, lake=open_lake(tmp_path / "new-lake"))  # a new PIPELINES_LAKE: no scored partitions
    write_partition(moved.lake, hour_partition("demo_churn", "raw", hour), raw, {"model": "demo_churn"})
    before = predictions_digest(engine), tables.count_rows(engine, tables.predictions_history, "demo_churn")
    score_interval(
        demo_spec(home), moved, engine, hour, hour + timedelta(hours=1), dag_run_id="moved"
    )  # the same rows: fine
    changed = raw.assign(monthly_charges=raw["monthly_charges"].where(raw.index != 0, 9_999.0))
    write_partition(moved.lake, hour_partition("demo_churn", "raw", hour), changed, {"model": "demo_churn"})
    with pytest.raises(RecordConflictError, match=r"would change or remove 1 prediction\(s\) logged by v1"):
        score_interval(demo_spec(home), moved, engine, hour, hour + timedelta(hours=1), dag_run_id="moved")
    with pytest.raises(PermanentError, match=r"param rescore_with is 'v2'; give 'champion' or a version number"):
        score_interval(
            demo_spec(home), moved, engine, hour, hour + timedelta(hours=1), dag_run_id="moved", rescore_with="v2"
        )
    assert (predictions_digest(engine), tables.count_rows(engine, tables.predictions_history, "demo_churn")) == before


NEXT_BACKTEST = BACKTEST_RUN + timedelta(days=1)


def test_each_backtest_ingests_the_labels_of_its_whole_cohort_window(home: Settings, engine: Engine) -> None:
    """A backtest reads every label file that arrived in its window (whole days from `lookback_days`
    before its end), whatever ingested them before: its result depends on its end only."""
    from pipelines.stages.backtest import cohort_window

    spec = demo_spec(home)
    for end in (BACKTEST_RUN, NEXT_BACKTEST):
        dag_run = run("demo_churn__backtest", end)
        assert dag_run.state == "success", task_states(dag_run)
        since, _ = cohort_window(spec, end)
        on_disk = [
            path
            for path in (home.source / "demo_churn" / "labels").rglob("hour=*.csv")
            if since
            <= datetime.strptime(f"{path.parent.name[3:]} {path.stem[5:]}", "%Y-%m-%d %H").replace(tzinfo=UTC)
            < end
        ]
        assert xcom(dag_run, "ingest_labels")["files_read"] == len(on_disk) > 24


def test_a_label_correction_counts_from_its_arrival_and_survives_a_reingest(home: Settings, engine: Engine) -> None:
    from pipelines.stages.backtest import cohort_predictions, labelled

    spec = demo_spec(home)
    target = labelled(cohort_predictions(spec, engine, BACKTEST_RUN)).iloc[0]

    def first_cohort() -> list[dict[str, Any]]:
        rows = [
            r
            for r in backtest_rows(engine)
            if r["cohort"] == "2026-01-03" and r["scored_by"] == "logged" and utc(r["labels_as_of"]) == BACKTEST_RUN
        ]
        return sorted(rows, key=lambda r: (r["model_version"], r["slice_column"], r["slice_value"]))  # any order

    assert run("demo_churn__backtest", BACKTEST_RUN).state == "success"
    as_of_backtest = first_cohort()
    arrival = NEXT_BACKTEST + timedelta(hours=2)  # inside the next day's backtest interval
    path = home.source / "demo_churn" / "labels" / f"dt={arrival:%Y-%m-%d}" / f"hour={arrival:%H}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "customer_id": [target["entity_id"]],
            "event_time": [target["as_of"].isoformat()],
            "churned": [1 - int(target["label"])],
            "arrived_at": [(arrival + timedelta(minutes=10)).isoformat()],
        }
    ).to_csv(path, index=False)
    third = NEXT_BACKTEST + timedelta(days=1)
    assert run("demo_churn__backtest", third).state == "success"  # ingests the correction
    assert run("demo_churn__backtest", BACKTEST_RUN).state == "success"  # re-reads the original files

    lab = tables.labels
    with engine.connect() as connection:
        deliveries = connection.execute(
            select(lab.c.label).where(
                lab.c.entity_id == target["entity_id"], lab.c.as_of == target["as_of"].to_pydatetime()
            )
        ).all()
    assert sorted(d.label for d in deliveries) == [0.0, 1.0]  # both kept

    def label_known_at(end: datetime) -> float:
        frame = labelled(cohort_predictions(spec, engine, end))
        return float(
            frame.loc[(frame["entity_id"] == target["entity_id"]) & (frame["as_of"] == target["as_of"]), "label"].iloc[
                0
            ]
        )

    assert label_known_at(BACKTEST_RUN) == target["label"]  # the backtest as of then is unchanged
    assert label_known_at(third) == 1 - target["label"]  # the correction counts from its arrival
    # Its metrics too: a backtest as of T is reproducible.
    again = first_cohort()
    changed = [
        (row["slice_column"], row["slice_value"], key, row[key], again_row[key])
        for row, again_row in zip(as_of_backtest, again, strict=True)
        for key in row
        if row[key] != again_row[key]
    ]
    assert len(again) == len(as_of_backtest) and changed == []


def test_an_hour_with_no_rows_is_scored_as_empty(home: Settings, engine: Engine) -> None:
    from pipelines.stages.score import score_interval
    from pipelines.storage.lake import read_partition, write_partition

    quiet = datetime(2026, 1, 3, 22, tzinfo=UTC)
    raw, _ = read_partition(home.lake, hour_partition("demo_churn", "raw", SCORED_HOURS[0]))
    write_partition(home.lake, hour_partition("demo_churn", "raw", quiet), raw.iloc[0:0], {"model": "demo_churn"})
    before = predictions_digest(engine)
    result = score_interval(demo_spec(home), home, engine, quiet, quiet + timedelta(hours=1), dag_run_id="quiet")
    assert result.rows == 0 and result.model_version == "1"
    scored = open_partition(home.lake, hour_partition("demo_churn", "scored", quiet))
    assert scored.rows == 0 and scored.manifest["model_version"] == "1"
    assert predictions_digest(engine) == before


def test_pipelines_run_reruns_a_range_of_intervals(home: Settings, engine: Engine) -> None:
    import subprocess
    import sys

    from tests import REPO_ROOT

    before = predictions_digest(engine)
    start, end = SCORED_HOURS[0].isoformat(), (SCORED_HOURS[-1] + timedelta(hours=1)).isoformat()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "demo_churn__score", "--start", start, "--end", end],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("demo_churn__score")]
    assert [line.split()[1:5] for line in lines] == [
        ["2026-01-03", f"{h:%H:%M}", "..", "2026-01-03"] for h in SCORED_HOURS
    ] and all("success" in line for line in lines)
    assert predictions_digest(engine) == before  # the same intervals again: the log keeps what served


def test_the_models_pages_read_this_storage(home: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's own API app (with our plugin, its auth manager) in process: the Models pages show
    this storage's champion and serve its artifacts, from the local lake or from S3, and follow the
    user's Airflow role."""
    import re

    from airflow.api_fastapi.app import create_app
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from fastapi.testclient import TestClient

    import pipelines.airflow.ui as ui

    ui._storage = None  # each run of this module has storage of its own: read its connections again
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,reader:viewer")
    client = TestClient(create_app())
    assert client.get("/pipelines/models/demo_churn").status_code == 401
    passwords = json.loads(Path(SimpleAuthManager.get_generated_password_file()).read_text())

    def login(user: str) -> dict[str, str]:
        token = client.post("/auth/token", json={"username": user, "password": passwords[user]}).json()
        return {"Authorization": f"Bearer {token['access_token']}"}

    # Airflow's viewer role reads the page, without the actions, and may not trigger them.
    reader = login("reader")
    seen = client.get("/pipelines/models/demo_churn", headers=reader)
    assert seen.status_code == 200 and 'id="champion"' in seen.text and "/rollback" not in seen.text
    refused = client.post("/pipelines/models/demo_churn/dry-run", headers=reader)
    assert refused.status_code == 403 and "demo_churn__train" in refused.json()["detail"]
    admin = login("admin")
    client.headers.update(admin)

    page = client.get("/pipelines/models/demo_churn")
    assert page.status_code == 200
    assert re.search(r'id="champion".*?<div class="big">v(\d+)</div>', page.text).group(1) == champion(home)
    assert page.text.count("<circle") >= 1  # the backtest chart
    result = re.search(r'href="\.\./(lake/demo_churn/validation/[^"]+\.json)"', page.text).group(1)
    assert client.get(f"/pipelines/{unquote(result)}").json()["success"] in {True, False}
    expected = home.lake.get(unquote(result).removeprefix("lake/"))
    assert client.get(f"/pipelines/{unquote(result)}").content == expected  # the lake's bytes, local or S3

    b = tables.backtest_metrics
    with engine.connect() as connection:
        backtest_run = connection.execute(select(b.c.dag_run_id).limit(1)).scalar_one()
    evidence = client.get(f"/pipelines/evidence/demo_churn__backtest/{quote(backtest_run, safe='')}/backtest").text
    plot = re.search(r'href="\.\./\.\./\.\./(lake/demo_churn/reports/backtest/[^"]+\.png)"', evidence).group(1)
    served = client.get(f"/pipelines/{unquote(plot)}")
    assert served.headers["content-type"] == "image/png" and served.content.startswith(b"\x89PNG")
    run_id = re.search(r'href="\.\./\.\./\.\./mlflow/(\w+)">backtest&#x27;s MLflow run', evidence).group(1)
    assert "backtest_dag_run_id" in client.get(f"/pipelines/mlflow/{run_id}").text  # no MLflow UI set: its details
    assert client.get("/pipelines/mlflow/0123456789abcdef0123456789abcdef").status_code == 404

    # A browser's session (its cookie alone) must prove that a POST came from this site: Origin, else
    # Referer, and the form token its page carries. None of these forgeries starts a run.
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    def rollback_runs() -> int:
        with create_session() as session:
            return session.query(DagRun).filter(DagRun.dag_id == "demo_churn__rollback").count()

    admin_token = client.headers.pop("Authorization").removeprefix("Bearer ")
    browser = TestClient(create_app(), cookies={"_token": admin_token})
    token = re.search(r'name="form_token" value="(\w+)"', browser.get("/pipelines/models/demo_churn").text).group(1)
    runs_before = rollback_runs()
    here = "http://testserver"
    for headers, sent_token, reason in [
        ({"Referer": "http://evil.example/page"}, token, "it came from http://evil.example"),
        ({"Origin": "http://evil.example", "Referer": f"{here}/x"}, token, "it came from http://evil.example"),
        ({"Origin": "null"}, token, "it came from null"),
        ({}, token, "neither Origin nor Referer"),
        ({"Origin": here}, None, "the form's token is missing or stale"),
        ({"Referer": f"{here}/pipelines/models/demo_churn"}, "0" * 64, "the form's token is missing or stale"),
    ]:
        form = {"version": "1", "reason": "forged", **({"form_token": sent_token} if sent_token else {})}
        refused = browser.post("/pipelines/models/demo_churn/rollback", data=form, headers=headers)
        assert refused.status_code == 403 and reason in refused.json()["detail"], (headers, refused.text)
    assert rollback_runs() == runs_before

    # A link in one model's lake folder to another's serves nothing: access is checked on the file.
    if isinstance(home.lake, LocalLake):
        other = home.lake.root / "another_model"
        other.mkdir(exist_ok=True)
        (other / "secret.json").write_text("{}")
        (home.lake.root / "demo_churn" / "link").symlink_to(other, target_is_directory=True)
        try:
            assert client.get("/pipelines/lake/demo_churn/link/secret.json", headers=admin).status_code == 404
            assert client.get(f"/pipelines/{unquote(result)}", headers=admin).status_code == 200
        finally:
            (home.lake.root / "demo_churn" / "link").unlink()


def test_backtests_in_any_order_leave_the_same_table(home: Settings, engine: Engine) -> None:
    """Last in this module (it empties the labels): backtests up to three ends, oldest first, then,
    from no labels and no backtest rows again, newest first with re-runs: the same rows. Every stored
    row of the first cohort matches an independent computation (sklearn on the logged predictions
    joined with the latest label delivered before its end), and the row that counts is the most labelled."""
    from sklearn.metrics import roc_auc_score
    from sqlalchemy import delete

    from pipelines.stages.backtest import backtest, cohort_window
    from pipelines.stages.labels import ingest_labels
    from pipelines.storage.sources import SourceAccess

    spec = demo_spec(home)
    cohort = "2026-01-03"

    def logged_and_delivered() -> tuple[pd.DataFrame, pd.DataFrame]:
        p, lab = tables.predictions, tables.labels
        with engine.connect() as connection:
            predictions = pd.DataFrame(
                connection.execute(select(p.c.entity_id, p.c.as_of, p.c.model_version, p.c.score)).all()
            )
            deliveries = pd.DataFrame(
                connection.execute(select(lab.c.entity_id, lab.c.as_of, lab.c.label, lab.c.arrived_at)).all()
            )
        for frame, column in ((predictions, "as_of"), (deliveries, "as_of"), (deliveries, "arrived_at")):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return predictions[predictions["as_of"].dt.strftime("%Y-%m-%d") == cohort], deliveries

    # Three ends from what earlier tests left: before the first label of the most scored version's
    # predictions arrived (none known), after its first arrival hour (some), and BACKTEST_RUN (all).
    predictions, deliveries = logged_and_delivered()
    busiest = predictions["model_version"].value_counts().index[0]
    arrivals = predictions[predictions["model_version"] == busiest].merge(deliveries, on=["entity_id", "as_of"])
    hours = sorted(
        arrivals.loc[arrivals["arrived_at"] < pd.Timestamp(BACKTEST_RUN), "arrived_at"].dt.floor("h").unique()
    )
    assert len(hours) >= 2, hours
    ends = [hours[0].to_pydatetime(), hours[1].to_pydatetime(), BACKTEST_RUN]

    def backtest_up_to(end: datetime) -> None:
        ingest_labels(spec, SourceAccess(home.source), engine, *cohort_window(spec, end))
        backtest(spec, home, engine, end, dag_run_id=f"order_{end:%Y%m%dT%H%M}")

    def table() -> list[tuple[Any, ...]]:
        return sorted((tuple(sorted(r.items())) for r in backtest_rows(engine)), key=repr)

    def forget() -> None:
        with engine.begin() as connection:
            connection.execute(delete(tables.backtest_metrics))
            connection.execute(delete(tables.labels))

    forget()
    for end in ends:
        backtest_up_to(end)
    oldest_first = table()
    forget()
    for end in (ends[2], ends[1], ends[2], ends[0], ends[1]):
        backtest_up_to(end)
    assert table() == oldest_first

    predictions, deliveries = logged_and_delivered()
    stored = [r for r in backtest_rows(engine) if r["slice_column"] == "ALL" and r["cohort"] == cohort]
    expected_rows = 0
    for end in ends:
        known = deliveries[deliveries["arrived_at"] < pd.Timestamp(end)].sort_values("arrived_at")
        known = known.drop_duplicates(["entity_id", "as_of"], keep="last")  # the latest delivery counts
        for version, scored in predictions.groupby("model_version"):
            joined = scored.merge(known, on=["entity_id", "as_of"])
            rows = [r for r in stored if r["model_version"] == version and utc(r["labels_as_of"]) == end]
            if joined.empty:
                assert rows == []  # no label known yet: nothing measured, no row
                continue
            expected_rows += 1
            (row,) = rows
            assert (row["n"], row["predictions"], row["positives"]) == (
                len(joined),
                len(scored),
                int(joined["label"].sum()),
            )
            assert row["complete"] is (
                end >= datetime(2026, 1, 4, tzinfo=UTC) + timedelta(hours=spec.label.delay_hours)
            )
            if joined["label"].nunique() == 2:
                assert row["auc"] == pytest.approx(roc_auc_score(joined["label"], joined["score"]))
    assert expected_rows >= 2 and len([r for r in stored if r["scored_by"] == "logged"]) == expected_rows
    (partial,) = [r for r in stored if r["model_version"] == busiest and utc(r["labels_as_of"]) == ends[1]]
    assert 0 < partial["n"] < partial["predictions"]  # the middle end knew some of its labels only

    current = tables.current_backtest("demo_churn", slice_column="ALL")
    with engine.connect() as connection:
        counted = connection.execute(select(current).where(current.c.cohort == cohort)).mappings().all()
    for row in counted:  # per version, the most labelled row counts: the latest end's
        same = [r for r in stored if r["model_version"] == row["model_version"] and r["scored_by"] == row["scored_by"]]
        assert row["n"] == max(r["n"] for r in same) and utc(row["labels_as_of"]) == BACKTEST_RUN
