"""Sources for real: SQL tables and queries on SQLite, PostgreSQL and MariaDB; CSV and parquet files
on a local folder and on S3 (moto's server); per-partition files, folders and one big file."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from sqlalchemy import text

from pipelines.core.errors import BadDataError, ConfigError, SourceMissingError, SourceOverdueError
from pipelines.core.spec import DATE_DIRECTIVES, FilesSource, ModelSpec
from pipelines.dev.demo_data import DemoConfig, generate_hour
from pipelines.stages.ingest import ingest
from pipelines.stages.labels import ingest_labels, labels_known_at
from pipelines.storage import database
from pipelines.storage.connections import ConnectionFields
from pipelines.storage.lake import LocalLake, read_object, s3_client
from pipelines.storage.sources import FileReader, SourceAccess, await_source, not_ready, read_source, source_engine
from tests.conftest import S3Endpoint, needs_server, postgres_database
from tests.unit.core.test_spec import DEMO_SPEC

START = datetime(2026, 1, 2, 10, tzinfo=UTC)
QUIET = START + timedelta(hours=2)  # no events at all in this hour
HOURS = [START + timedelta(hours=i) for i in range(4) if START + timedelta(hours=i) != QUIET]
END = START + timedelta(hours=4)


def spec_with(events: dict[str, Any], labels: dict[str, Any] | None = None, partition: str = "hour") -> ModelSpec:
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    raw["source"] = {
        "events": events,
        "labels": labels or {"kind": "files", "path": "labels/{start:%Y-%m-%d}.csv", "when_missing": "empty"},
    }
    raw["partition"] = partition
    if partition == "day":
        raw["schedules"]["score"] = "0 0 * * *"
    return ModelSpec.model_validate(raw)


def events_of(hours: list[datetime]) -> pd.DataFrame:
    frames = [generate_hour(DemoConfig(rows_per_hour=50), h).drop(columns=["churned"]) for h in hours]
    return pd.concat(frames, ignore_index=True)


def staged_frames(lake: LocalLake, deliveries: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    return {str(d["interval_start"]): read_object(lake, d, "test") for d in deliveries}


def assert_hours_staged(lake: LocalLake, deliveries: list[dict[str, Any]], expected: pd.DataFrame) -> None:
    """One delivery per hour of [START, END), holding exactly that hour's rows; the quiet hour has none."""
    staged = staged_frames(lake, deliveries)
    assert list(staged) == [(START + timedelta(hours=i)).isoformat() for i in range(4)]
    assert len(staged[QUIET.isoformat()]) == 0
    assert list(staged[QUIET.isoformat()].columns)[:2] == ["customer_id", "event_time"]
    got = pd.concat(staged.values(), ignore_index=True).sort_values(["event_time", "customer_id"])
    want = expected.sort_values(["event_time", "customer_id"])
    assert str(got["event_time"].dtype) == "datetime64[ns, UTC]"
    assert got["customer_id"].tolist() == want["customer_id"].tolist()
    assert (got["event_time"].to_numpy() == pd.to_datetime(want["event_time"], utc=True).to_numpy()).all()
    assert got["monthly_charges"].tolist() == pytest.approx(want["monthly_charges"].tolist())
    for start, frame in staged.items():
        hour = pd.Timestamp(start)
        assert frame["event_time"].between(hour, hour + timedelta(minutes=59, seconds=59)).all()


# --- SQL ----------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConnectionFields]:
    """An empty database on each backend, as an Airflow connection would describe it."""
    if request.param == "sqlite":
        yield ConnectionFields("warehouse", "sqlite", host=str(tmp_path / "warehouse.db"))
    elif request.param == "postgresql":
        from sqlalchemy import make_url

        with postgres_database("pipelines_source") as url:
            parts = make_url(url)
            yield ConnectionFields(
                "warehouse", "postgres", parts.host, parts.port, parts.username, None, parts.database
            )
    else:
        import pymysql

        name = f"pipelines_source_{uuid.uuid4().hex[:10]}"
        try:
            admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=5)
        except pymysql.err.OperationalError as exc:
            needs_server("the MariaDB server at 127.0.0.1:3306 (user root)", exc)
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        try:
            yield ConnectionFields("warehouse", "mysql", "127.0.0.1", 3306, "root", None, name)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            admin.close()


def load_table(conn: ConnectionFields, name: str, frame: pd.DataFrame, time_columns: list[str]) -> None:
    """Store times the way each backend holds them: timestamptz on PostgreSQL, DATETIME (UTC) on
    MariaDB, ISO 8601 text with an offset on SQLite (pandas' default would hide the 'T' problem)."""
    engine = source_engine(conn)
    frame = frame.copy()
    for column in time_columns:
        times = pd.to_datetime(frame[column], utc=True)
        if engine.dialect.name == "sqlite":
            frame[column] = times.map(lambda t: t.isoformat())
        elif engine.dialect.name == "mysql":
            frame[column] = times.dt.tz_localize(None)
        else:
            frame[column] = times
    frame.to_sql(name, engine, index=False, if_exists="append")
    engine.dispose()


def access_to(conn: ConnectionFields, root: Path) -> SourceAccess:
    return SourceAccess(root, {conn.conn_id: conn}.get)


def test_a_sql_table_is_read_for_the_interval_and_split_into_hours(warehouse: ConnectionFields, tmp_path: Path) -> None:
    # Rows just outside the interval on both sides must stay out: the filter is [start, end) in UTC.
    outside = events_of([START - timedelta(hours=1), END])
    load_table(warehouse, "events", pd.concat([events_of(HOURS), outside]), ["event_time"])
    spec = spec_with({"kind": "sql", "connection": "warehouse", "table": "events", "chunk_rows": 1000})
    lake = LocalLake(tmp_path / "lake")
    first = ingest(spec, access_to(warehouse, tmp_path), lake, START, END)
    assert_hours_staged(lake, first, events_of(HOURS))
    assert first[0]["source"]["kind"] == "sql" and first[0]["source"]["params"]["end"] == "2026-01-02T14:00:00"
    assert ingest(spec, access_to(warehouse, tmp_path), lake, START, END) == first  # a re-run stages the same


def test_a_query_that_overreaches_its_interval_is_refused(warehouse: ConnectionFields, tmp_path: Path) -> None:
    load_table(warehouse, "events", events_of([*HOURS, END]), ["event_time"])
    query = "SELECT * FROM events WHERE :start IS NOT NULL AND :end IS NOT NULL"  # forgets to filter
    spec = spec_with({"kind": "sql", "connection": "warehouse", "query": query})
    with pytest.raises(BadDataError, match=r"connection 'warehouse', query\): the query returned \d+ row\(s\) with"):
        ingest(spec, access_to(warehouse, tmp_path), LocalLake(tmp_path / "lake"), START, END)
    assert not (tmp_path / "lake").exists()


def test_a_sql_source_waits_for_its_ready_query(warehouse: ConnectionFields, tmp_path: Path) -> None:
    load_table(warehouse, "loads", pd.DataFrame({"loaded_until": [START]}), ["loaded_until"])
    ready = "SELECT count(*) FROM loads WHERE loaded_until >= :end AND :start IS NOT NULL"
    if warehouse.conn_type == "sqlite":  # text times there: compare them as times
        ready = "SELECT count(*) FROM loads WHERE datetime(loaded_until) >= datetime(:end) AND :start IS NOT NULL"
    spec = spec_with({"kind": "sql", "connection": "warehouse", "table": "events", "ready_query": ready})
    access = access_to(warehouse, tmp_path)
    assert not_ready(spec.source.events, access, spec.timestamp, START, END, "hour") == [
        "sql source (connection 'warehouse', events): ready_query is not true yet"
    ]
    load_table(warehouse, "loads", pd.DataFrame({"loaded_until": [END]}), ["loaded_until"])
    assert not_ready(spec.source.events, access, spec.timestamp, START, END, "hour") == []


def test_sql_labels_are_read_by_arrival(warehouse: ConnectionFields, tmp_path: Path) -> None:
    labels = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "event_time": [START - timedelta(hours=8)] * 3,
            "churned": [1, 0, 1],
            "arrived_at": [START, START + timedelta(minutes=30), END],  # C3 arrives after the interval
        }
    )
    load_table(warehouse, "churn_labels", labels, ["event_time", "arrived_at"])
    spec = spec_with(
        {"kind": "files", "path": "events/{start:%Y-%m-%d}.csv"},
        {"kind": "sql", "connection": "warehouse", "table": "churn_labels"},
    )
    database.upgrade_schema(f"sqlite:///{tmp_path / 'tables.db'}")
    engine = database.make_engine(f"sqlite:///{tmp_path / 'tables.db'}")
    result = ingest_labels(spec, access_to(warehouse, tmp_path), engine, START, END)
    assert (result.rows, result.files_read) == (2, 1)
    known = labels_known_at(engine, spec, START - timedelta(days=1), START, END + timedelta(hours=1))
    assert dict(zip(known["entity_id"], known["label"], strict=True)) == {"C1": 1.0, "C2": 0.0}
    engine.dispose()


def test_sql_source_faults_name_the_connection(tmp_path: Path) -> None:
    spec = spec_with({"kind": "sql", "connection": "warehouse", "table": "no_such_table"})
    with pytest.raises(ConfigError, match=r"Airflow connection 'warehouse' \(a sql source\) is not defined"):
        ingest(spec, SourceAccess(tmp_path), LocalLake(tmp_path / "lake"), START, END)
    conn = ConnectionFields("warehouse", "sqlite", host=str(tmp_path / "w.db"))
    with pytest.raises(ConfigError, match=r"connection 'warehouse', no_such_table\): no such table: no_such_table"):
        ingest(spec, access_to(conn, tmp_path), LocalLake(tmp_path / "lake"), START, END)
    # A timestamp column the table lacks is named, on SQLite too (which would read it as a string).
    load_table(conn, "events", events_of(HOURS).drop(columns="event_time").assign(at="x"), [])
    renamed = spec_with({"kind": "sql", "connection": "warehouse", "table": "events"})
    with pytest.raises(ConfigError, match=r"events\): the table has no column 'event_time', the time it is read by"):
        ingest(renamed, access_to(conn, tmp_path), LocalLake(tmp_path / "lake"), START, END)
    # A ready_query the database refuses is the spec's fault, said once: not a wait, not a retry.
    broken = spec_with(
        {
            "kind": "sql",
            "connection": "warehouse",
            "table": "events",
            "ready_query": "SELECT 1 FROM nowhere WHERE :start < :end",
        }
    )
    with pytest.raises(
        ConfigError, match=r"events\): the database refused the ready_query \(a spec field\): no such table"
    ):
        not_ready(broken.source.events, access_to(conn, tmp_path), broken.timestamp, START, END, "hour")
    odd = ConnectionFields("warehouse", "snowflake", host="x")
    with pytest.raises(ConfigError, match="has type 'snowflake'; a sql source reads postgres, mysql"):
        ingest(spec, access_to(odd, tmp_path), LocalLake(tmp_path / "lake"), START, END)


# --- files --------------------------------------------------------------------------------------


def s3_connection(endpoint: S3Endpoint) -> ConnectionFields:
    return ConnectionFields(
        "source_s3",
        "aws",
        login=endpoint.options.access_key_id,
        password=endpoint.options.secret_access_key,
        extra={"endpoint_url": endpoint.url, "region_name": "us-east-1"},
    )


def test_parquet_files_per_hour_on_s3_with_a_quiet_hour(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    bucket = s3_endpoint.new_bucket()
    client = s3_client(s3_endpoint.options)
    for hour in HOURS:  # the producer writes no file for the quiet hour
        buffer = io.BytesIO()
        events_of([hour]).to_parquet(buffer, index=False)
        client.put_object(Bucket=bucket, Key=f"events/{hour:%Y/%m/%d/%H}.parquet", Body=buffer.getvalue())
    path = f"s3://{bucket}/events/{{start:%Y/%m/%d/%H}}.parquet"
    conn = s3_connection(s3_endpoint)
    access = SourceAccess(tmp_path, {conn.conn_id: conn}.get)
    lake = LocalLake(tmp_path / "lake")

    waiting = spec_with({"kind": "files", "path": path, "connection": "source_s3"})
    missing = f"s3://{bucket}/events/2026/01/02/12.parquet"
    assert not_ready(waiting.source.events, access, "event_time", START, END, "hour") == [missing]
    # The hour may still arrive until an hour past the interval's end; from then on, waiting is over.
    allowed = timedelta(hours=1)
    early = END + allowed - timedelta(seconds=1)
    assert await_source(
        waiting.source.events, access, "event_time", (START, END), "hour", allowed_delay=allowed, now=early
    ) == [missing]
    with pytest.raises(
        SourceOverdueError, match=f"still lacks 1 part\\(s\\), e.g. \\['{missing}'\\]; it was due by 2026-01-02T15:00"
    ):
        await_source(
            waiting.source.events, access, "event_time", (START, END), "hour", allowed_delay=allowed, now=END + allowed
        )
    with pytest.raises(SourceMissingError, match=f"hour starting 2026-01-02T12:00:00\\+00:00: expected {missing}"):
        ingest(waiting, access, lake, START, END)

    sparse = spec_with({"kind": "files", "path": path, "connection": "source_s3", "when_missing": "empty"})
    assert not_ready(sparse.source.events, access, "event_time", START, END, "hour") == []
    deliveries = ingest(sparse, access, lake, START, END)
    assert_hours_staged(lake, deliveries, events_of(HOURS))
    assert deliveries[2]["source"] == {"kind": "files", "uri": missing, "sha256": None, "absent": True}


def test_one_big_csv_is_filtered_by_time(tmp_path: Path) -> None:
    everything = events_of([START - timedelta(hours=1), *HOURS, END])
    (tmp_path / "exports").mkdir()
    everything.to_csv(tmp_path / "exports" / "events.csv", index=False)
    spec = spec_with({"kind": "files", "path": "exports/events.csv"})
    lake = LocalLake(tmp_path / "lake")
    assert_hours_staged(lake, ingest(spec, SourceAccess(tmp_path), lake, START, END), events_of(HOURS))

    everything.loc[5, "event_time"] = None
    everything.to_csv(tmp_path / "exports" / "events.csv", index=False)
    with pytest.raises(BadDataError, match=r"exports/events.csv: 1 row\(s\) have no 'event_time'"):
        ingest(spec, SourceAccess(tmp_path), lake, START, END)


def test_a_folder_per_day_of_csv_files_feeds_a_daily_model(tmp_path: Path) -> None:
    day = datetime(2026, 1, 2, tzinfo=UTC)
    folder = tmp_path / "events" / "dt=2026-01-02"
    folder.mkdir(parents=True)
    morning, evening = events_of([day + timedelta(hours=8)]), events_of([day + timedelta(hours=20)])
    morning.to_csv(folder / "part-0.csv", index=False)
    evening.to_csv(folder / "part-1.csv", index=False)
    (folder / "_SUCCESS").write_text("")
    spec = spec_with({"kind": "files", "path": "events/dt={start:%Y-%m-%d}/", "format": "csv"}, partition="day")
    lake = LocalLake(tmp_path / "lake")
    with pytest.raises(SourceMissingError, match="day starting 2026-01-03"):
        ingest(spec, SourceAccess(tmp_path), lake, day, day + timedelta(days=2))
    (delivery,) = ingest(spec, SourceAccess(tmp_path), lake, day, day + timedelta(days=1))
    assert delivery["partition"] == "demo_churn/raw/dt=2026-01-02" and delivery["rows"] == len(morning) + len(evening)
    assert delivery["source"]["files"] == [str(folder / "part-0.csv"), str(folder / "part-1.csv")]


def test_a_damaged_parquet_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "2026-01-02T10.parquet").write_bytes(b"PAR1 not really")
    spec = spec_with({"kind": "files", "path": "events/{start:%Y-%m-%dT%H}.parquet"})
    with pytest.raises(BadDataError, match=r"events/2026-01-02T10.parquet: not a readable parquet file"):
        ingest(spec, SourceAccess(tmp_path), LocalLake(tmp_path / "lake"), START, START + timedelta(hours=1))


def test_a_daily_interval_must_cover_whole_days(tmp_path: Path) -> None:
    spec = spec_with({"kind": "files", "path": "events/dt={start:%Y-%m-%d}/", "format": "csv"}, partition="day")
    with pytest.raises(Exception, match="does not start on a whole day"):
        ingest(spec, SourceAccess(tmp_path), LocalLake(tmp_path / "lake"), START, START + timedelta(days=1))


def test_the_sqlite_time_filter_compares_times_not_text(tmp_path: Path) -> None:
    """'2026-01-02T13:59' sorts after '2026-01-02 14:00' as text; the table filter must not care."""
    conn = ConnectionFields("warehouse", "sqlite", host=str(tmp_path / "w.db"))
    engine = source_engine(conn)
    with engine.begin() as db:
        db.execute(text("CREATE TABLE events (customer_id TEXT, event_time TEXT, monthly_charges REAL)"))
        db.execute(
            text("INSERT INTO events VALUES ('A', '2026-01-02T13:59:00+00:00', 1), ('B', '2026-01-02 14:00:00', 2)")
        )
    engine.dispose()
    spec = spec_with({"kind": "sql", "connection": "warehouse", "table": "events"})
    from pipelines.storage.sources import SqlReader

    assert spec.source.events.kind == "sql"
    frame, _ = SqlReader(spec.source.events, access_to(conn, tmp_path), "event_time").read(START, END)
    assert frame["customer_id"].tolist() == ["A"]


# --- paths are checked as rendered, not only as written ------------------------------------------


@pytest.mark.parametrize("directive", sorted(DATE_DIRECTIVES))
def test_every_accepted_placeholder_renders_under_the_source_root(tmp_path: Path, directive: str) -> None:
    source = FilesSource(kind="files", path=f"feed/{{start:%{directive}}}/x={{end:%Y-%m-%dT%H:%M}}/{{start}}.csv")
    reader = FileReader(source, SourceAccess(tmp_path))
    # A year and more of hours, 37 apart: every month, weekday, hour and both years' ends.
    for start in (datetime(2025, 12, 31, tzinfo=UTC) + timedelta(hours=37 * n) for n in range(260)):
        where = reader.locate(start, start + timedelta(hours=1))
        assert where.local is not None and where.local.resolve().is_relative_to(tmp_path.resolve()), where
        rendered = where.text.removeprefix(str(tmp_path))
        assert not {".", ".."} & set(rendered.split("/")), rendered


def test_a_placeholder_that_renders_a_climb_is_a_spec_error_naming_the_field(tmp_path: Path) -> None:
    from pipelines.core.spec import SpecError, load_spec
    from tests.unit.core.test_spec import SOURCES, write_spec

    attack = "demo_churn/{start:..}/{start:..}/{start:..}/srv/other/{start:%H}.csv"
    with pytest.raises(
        SpecError, match=r"field 'source.events.files.path': .*placeholder \{start:\.\.\} is not a date"
    ):
        load_spec(write_spec(tmp_path, "demo_churn", source={**SOURCES, "events": {"kind": "files", "path": attack}}))


def unchecked(path: str) -> FilesSource:
    """A source whose path skipped the spec's check (a spec validated by an older release, say)."""
    return FilesSource.model_construct(kind="files", path=path, format="csv", when_missing="wait", connection=None)


def test_a_rendered_path_that_leaves_its_root_reads_nothing(tmp_path: Path) -> None:
    root, outside = tmp_path / "source", tmp_path / "srv" / "other"
    outside.mkdir(parents=True)
    events_of([START]).to_csv(outside / f"{START:%H}.csv", index=False)
    (root / "demo_churn").mkdir(parents=True)
    access = SourceAccess(root)
    climb = unchecked("demo_churn/{start:..}/{start:..}/srv/other/{start:%H}.csv")
    with pytest.raises(
        ConfigError, match=r"renders to 'demo_churn/\.\./\.\./srv/other/10\.csv' .* not under the source root"
    ):
        read_source(climb, access, "event_time", START, START + timedelta(hours=1), "hour")
    with pytest.raises(ConfigError, match="not under the source root"):
        not_ready(climb, access, "event_time", START, START + timedelta(hours=1), "hour")
    # A link inside the root that leads out of it: as a partition's file, and as a file of a folder.
    (root / "demo_churn" / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="not under the source root"):
        read_source(
            unchecked("demo_churn/linked/{start:%H}.csv"),
            access,
            "event_time",
            START,
            START + timedelta(hours=1),
            "hour",
        )
    (root / "feed").mkdir()
    (root / "feed" / "part-0.csv").symlink_to(outside / f"{START:%H}.csv")
    with pytest.raises(ConfigError, match=r"part-0.csv links outside the source root"):
        read_source(unchecked("feed/"), access, "event_time", START, START + timedelta(hours=1), "hour")
    # On S3: the bucket the spec names, and no '.' or '..' parts in the key.
    for path in ("s3://lake/feed/{start:..}/x.csv", "s3://{start:%Y}/x.csv"):
        with pytest.raises(ConfigError, match="must stay in the bucket the spec names"):
            FileReader(unchecked(path), access).locate(START, START + timedelta(hours=1))
