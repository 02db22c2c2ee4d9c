"""The project's tables (SQLAlchemy 2 Core). SQLite by default, PostgreSQL at scale, same code."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Subquery,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    inspect,
    literal,
    make_url,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite

from pipelines.core.errors import BadDataError, ConfigError, RecordConflictError, SchemaError
from pipelines.core.tasks import METRICS

if TYPE_CHECKING:  # imported where frames are written: the DAG files import this module's constants
    import pandas as pd

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("model_version", String(32), nullable=False),
    # binary: the probability; regression: the value; multiclass: the predicted class's probability
    Column("score", Float, nullable=False),
    Column("features_sha256", String(64), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    Column("scored_at", DateTime(timezone=True), nullable=False),
    # How many of the row's categorical inputs the model never saw in training (scored as missing).
    Column("unseen_categories", Integer),
    # Multiclass only: the predicted class, and every class's probability as a JSON object {class: p}.
    Column("predicted_class", String(256)),
    Column("class_probabilities", Text),
    # Time first: an interval's rows go in at the end of the index, and per-interval reads use it too.
    UniqueConstraint("model_name", "as_of", "entity_id", name="uq_predictions_key"),
)

# What served is never lost: a logged prediction that a later scoring replaces (another version, chosen
# explicitly) is copied here, whole, in the same transaction, before it is replaced or removed.
predictions_history = Table(
    "predictions_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    *[Column(c.name, c.type, nullable=c.nullable) for c in predictions.columns],
    Column("superseded_at", DateTime(timezone=True), nullable=False),
    Column("superseded_by_run", String(250), nullable=False),
    Index("ix_predictions_history_as_of", "model_name", "as_of"),
)

labels = Table(
    "labels",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("label", Float),  # binary 0/1 or a regression value
    Column("label_class", String(256)),  # a multiclass label, by its class name
    Column("arrived_at", DateTime(timezone=True), nullable=False),
    # Every delivery of a key is kept: the label as known at T is the latest one that arrived before T.
    # Time first, as the predictions' key: reads by as_of range (the backtest's) use it.
    UniqueConstraint("model_name", "as_of", "entity_id", "arrived_at", name="uq_labels_delivery"),
)

backtest_metrics = Table(
    "backtest_metrics",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("cohort", String(10), nullable=False),  # the as_of date, YYYY-MM-DD
    Column("model_version", String(32), nullable=False),
    # logged: the scores the serving model gave; replay: a challenger scoring the same logged inputs
    Column("scored_by", String(8), nullable=False),
    Column("slice_column", String(128), nullable=False),  # ALL for the whole cohort
    Column("slice_value", String(256), nullable=False),
    Column("n", Integer, nullable=False),  # the cohort's predictions that had a label at labels_as_of
    # All of the cohort's logged predictions (labelled or not): coverage is n / predictions. NULL on
    # replayed rows (the challenger replays labelled rows only) and on rows stored before 0006.
    Column("predictions", Integer),
    # Every prediction of the cohort was past its label delay at labels_as_of: its labels are all in.
    Column("complete", Boolean),
    # The task's metrics (pipelines/core/metrics.py); the others stay NULL.
    Column("positives", Integer),  # binary
    *(Column(name, Float) for name in METRICS),  # a new metric's column also needs its migration
    Column("mean_label", Float),
    Column("class_recall", Text),  # JSON {class: recall} of the classes among the labels
    Column("mean_score", Float),
    Column("labels_as_of", DateTime(timezone=True), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    UniqueConstraint(
        "model_name",
        "cohort",
        "model_version",
        "scored_by",
        "slice_column",
        "slice_value",
        "labels_as_of",  # append-only history: each backtest adds the cohorts as its labels knew them
        name="uq_backtest_metrics_key",
    ),
)

validation_runs = Table(
    "validation_runs",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("dag_id", String(250), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    Column("suite", String(128), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("failed_expectations", Text, nullable=False),
    Column("result_path", Text, nullable=False),
    Column("validated_at", DateTime(timezone=True), nullable=False),
    # Policy 'quarantine': rows checked, rows kept aside (and where), the rest went on.
    Column("rows_checked", Integer),
    Column("rows_quarantined", Integer),
    Column("quarantine_uri", Text),
    UniqueConstraint("model_name", "dag_id", "interval_start", "interval_end", name="uq_validation_key"),
)

drift_reports = Table(
    "drift_reports",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("reference_rows", Integer, nullable=False),
    Column("current_rows", Integer, nullable=False),
    Column("columns", Integer, nullable=False),
    Column("drifted_columns", Integer, nullable=False),
    Column("drift_share", Float, nullable=False),
    Column("dataset_drift", Boolean, nullable=False),
    Column("drifted_column_names", Text, nullable=False),
    Column("prediction_drift", Boolean),  # did the model's score distribution drift too
    Column("verdict", Text),  # JSON: the drift policy's verdict at this window (pipelines/stages/drift_policy.py)
    Column("report_path", Text, nullable=False),
    Column("reference", Text),  # what the window was compared with (drift.reference); NULL before 0003
    Column("dag_run_id", String(250), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "interval_start", "interval_end", name="uq_drift_reports_key"),
)

drift_metrics = Table(
    "drift_metrics",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("column_name", String(128), nullable=False),
    Column("stattest", String(64), nullable=False),
    Column("drift_score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("drifted", Boolean, nullable=False),
    UniqueConstraint("model_name", "interval_start", "interval_end", "column_name", name="uq_drift_metrics_key"),
)

# An Evidently model-quality report per monitored window whose labels had arrived (pipelines/stages/quality.py).
quality_reports = Table(
    "quality_reports",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("task", String(16), nullable=False),
    Column("rows", Integer, nullable=False),  # labelled predictions in the window
    Column("metrics", Text, nullable=False),  # JSON: the task's metrics (pipelines/core/metrics.py)
    Column("report_path", Text),  # NULL: Evidently could not judge the window (a class absent)
    Column("labels_as_of", DateTime(timezone=True), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "interval_start", "interval_end", name="uq_quality_reports_key"),
)

model_events = Table(
    "model_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(64), nullable=False),
    Column("event", String(32), nullable=False),  # alias_moved | gate_decision | approval
    Column("alias", String(32)),
    Column("from_version", String(32)),
    Column("to_version", String(32)),
    Column("reason", Text, nullable=False),
    Column("dag_run_id", String(250)),
    Column("actor", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("details", Text),  # JSON: the full gate decision record, for gate_decision events
)

BATCH_ROWS = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the scorer write while the UI or CLI reads; busy_timeout waits out a parallel writer.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_read_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # setting WAL would write to the file: a reader leaves it
    cursor.close()


# Schema versions are Alembic revisions (pipelines/storage/migrations); tasks only check the version.
SCHEMA_VERSION_TABLE = "pipelines_schema_version"
HEAD_REVISION = "0006"
MIGRATIONS = Path(__file__).parent / "migrations"


def _engine(url: str, read_only: bool = False) -> Engine:
    if not read_only:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    location = make_url(url)
    if location.get_backend_name() == "sqlite":
        # SQLite's read-only mode: works on a file the user may not write, and cannot change it.
        path = Path(location.database or "").resolve()
        if not path.exists():
            raise SchemaError(f"the pipeline's tables at {url} do not exist yet: run `pipelines db upgrade`")
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
        event.listen(engine, "connect", _sqlite_read_pragmas)
        return engine
    return create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})


def make_engine(url: str, read_only: bool = False) -> Engine:
    """The engine every stage uses, after checking the tables are at the schema revision this code needs.

    read_only: for commands that only look (status, history, doctor); the database refuses any write.
    """
    engine = _engine(url, read_only)
    require_current_schema(engine)
    return engine


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the tables are at; None when they were never versioned (or do not exist)."""
    if not inspect(engine).has_table(SCHEMA_VERSION_TABLE):
        return None
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT version_num FROM {SCHEMA_VERSION_TABLE}")).scalar_one_or_none()


def require_current_schema(engine: Engine) -> None:
    revision = schema_revision(engine)
    if revision == HEAD_REVISION:
        return
    where = engine.url.render_as_string(hide_password=True)
    if revision is None:
        state = "predate schema versions" if inspect(engine).has_table("predictions") else "do not exist yet"
    else:
        state = f"are at schema revision {revision}, this code needs {HEAD_REVISION}"
    advice = (
        "run `pipelines db upgrade` "
        "(it migrates the tables tasks use: the pipelines_tables Airflow connection, else PIPELINES_TABLES_URL)"
    )
    if revision is None and not os.environ.get("PIPELINES_HOME") and not os.environ.get("PIPELINES_TABLES_URL"):
        # The default home is a guess: creating tables there would start a second, empty home.
        advice = (
            "PIPELINES_HOME is not set, so this is the default home; if your pipeline's home is elsewhere, "
            f"set PIPELINES_HOME to it; only if this is the home you mean, {advice}"
        )
    raise SchemaError(f"the pipeline's tables at {where} {state}: {advice}")


def upgrade_schema(url: str) -> tuple[str | None, str]:
    """Bring the tables to the head revision with Alembic; returns (revision before, revision after).

    Tables made before schema versions existed are adopted by the first revision, which creates only
    what is missing. No revision drops a table holding predictions, labels, events or metrics.
    """
    from alembic import command
    from alembic.config import Config

    location = make_url(url)
    if location.get_backend_name() == "sqlite" and location.database:
        Path(location.database).parent.mkdir(parents=True, exist_ok=True)  # a new home has no folder yet
    engine = _engine(url)
    try:
        before = schema_revision(engine)
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return before, str(schema_revision(engine))
    finally:
        engine.dispose()


def upsert(
    engine: Engine | Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: Iterable[str],
    update_when_changed: Iterable[str] | None = None,
) -> None:
    """Insert rows; on a key clash update the other columns.

    With `update_when_changed`, an existing row is only rewritten when one of those columns
    differs, so replaying the same rows leaves the table byte-for-byte unchanged. Rows go in
    batches of BATCH_ROWS through the driver's executemany (sqlite3's C loop, psycopg's pipeline
    mode) inside one transaction (the caller's, when given a connection), never as one statement per
    Python call.
    """
    if not rows:
        return
    key = list(key)
    statement = _dialect_insert(engine)(table)
    updated = [c.name for c in table.columns if c.name not in key and not c.primary_key]
    where = None
    if update_when_changed is not None:
        where = or_(*[table.c[name].is_distinct_from(statement.excluded[name]) for name in update_when_changed])
    statement = statement.on_conflict_do_update(
        index_elements=key, set_={name: statement.excluded[name] for name in updated}, where=where
    )
    with engine.begin() if isinstance(engine, Engine) else nullcontext(engine) as connection:
        for offset in range(0, len(rows), BATCH_ROWS):
            connection.execute(statement, list(rows[offset : offset + BATCH_ROWS]))


def _dialect_insert(engine_or_connection: Engine | Connection) -> Any:
    dialect = engine_or_connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise ConfigError(f"unsupported tables backend '{dialect}': use SQLite or PostgreSQL")


COPY_CHUNK_ROWS = 100_000  # rows per chunk of a bulk load: bounds the memory it takes


def _is_time(series: pd.Series) -> bool:
    import pandas as pd

    return isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series.dtype)


def _utc_text(series: pd.Series) -> Any:
    """Times as UTC text "YYYY-MM-DD HH:MM:SS.ffffff" (None for NaT), an object array,
    formatted by numpy (a Python datetime, or pyarrow's CSV writer, per value costs a second or more
    per million rows; an interval's rows share few times, one for scored_at)."""
    import numpy as np

    from pipelines.core.distinct import by_distinct

    def text(times: pd.Series) -> Any:
        if times.dt.tz is not None:
            times = times.dt.tz_convert("UTC").dt.tz_localize(None)
        return np.char.replace(np.datetime_as_string(times.to_numpy(dtype="datetime64[us]"), unit="us"), "T", " ")

    return by_distinct(series, text, None)


def _python_column(series: pd.Series, column: Column[Any], dialect: Any) -> list[Any]:
    """One column as the DBAPI values SQLite takes (None for missing), converted a column at a time."""
    import pandas as pd

    if _is_time(series):
        # SQLAlchemy's SQLite DATETIME text of the UTC wall time ("YYYY-MM-DD HH:MM:SS.ffffff").
        return list(_utc_text(series))
    missing = series.isna()
    values = series.astype(object).where(~missing, None).tolist() if missing.any() else series.tolist()
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None or pd.api.types.is_float_dtype(series.dtype):  # floats: Python floats already
        return list(values)
    return [process(v) for v in values]


@contextmanager
def bulk_insert(connection: Connection, table: Table, columns: list[str]) -> Iterator[Callable[[pd.DataFrame], None]]:
    """A writer of frames (those columns, in order) into the table inside the caller's transaction,
    without conflict handling. PostgreSQL: one binary COPY for every frame written, so the server
    stores a frame while the caller makes the next; a key conflict raises IntegrityError on leaving.
    SQLite: an executemany per frame."""
    quoted = ", ".join(f'"{c}"' for c in columns)
    if connection.dialect.name != "postgresql":
        statement = f'INSERT INTO "{table.name}" ({quoted}) VALUES ({", ".join("?" for _ in columns)})'

        def execute_many(frame: pd.DataFrame) -> None:
            for offset in range(0, len(frame), COPY_CHUNK_ROWS):  # chunks: a row of Python values costs ~1 kB
                chunk = frame.iloc[offset : offset + COPY_CHUNK_ROWS]
                values = [_python_column(chunk[name], table.c[name], connection.dialect) for name in columns]
                connection.exec_driver_sql(statement, list(zip(*values, strict=True)))

        yield execute_many
        return
    import psycopg
    from psycopg.copy import QueuedLibpqWriter
    from sqlalchemy.exc import IntegrityError

    from pipelines.storage import pgcopy

    raw = connection.connection.driver_connection
    assert raw is not None
    statement = f'COPY "{table.name}" ({quoted}) FROM STDIN (FORMAT binary)'

    def copy_frame(frame: pd.DataFrame) -> None:
        for offset in range(0, len(frame), COPY_CHUNK_ROWS):  # chunks: bounds the payload held at once
            copy.write(pgcopy.copy_rows(frame.iloc[offset : offset + COPY_CHUNK_ROWS][columns], table))

    try:
        # Queued: a thread sends what was written while the caller goes on, so the server's work on one
        # chunk overlaps the caller's on the next (psycopg bounds the queue to 1024 blocks of 128 kB).
        with raw.cursor() as cursor, cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
            copy.write(pgcopy.HEADER)
            yield copy_frame
            copy.write(pgcopy.TRAILER)
    except psycopg.IntegrityError as exc:  # the raw driver's error, as SQLAlchemy reports one
        raise IntegrityError(statement, None, exc) from exc


def insert_frame(connection: Connection, table: Table, frame: pd.DataFrame) -> None:
    """Bulk-load the frame's rows into the table, without conflict handling (see `bulk_insert`).
    Every column of the frame must be one of the table's."""
    if len(frame):
        with bulk_insert(connection, table, list(frame.columns)) as write:
            write(frame)


def scope_has_rows(connection: Connection, table: Table, scope: ColumnElement[bool]) -> bool:
    return connection.execute(select(literal(1)).where(exists().where(scope))).first() is not None


def refresh_statistics(engine: Engine, *tables: Table) -> list[str]:
    """PostgreSQL: ANALYZE the tables whose planner statistics are missing or stale (more than a
    tenth of their rows changed since); returns those analyzed. Autovacuum does this too, but only
    minutes later: until then a new or fast-grown table is estimated at a row or so, and the planner
    re-runs the latest-label aggregate once per prediction (minutes instead of milliseconds). A
    no-op on SQLite, whose planner needs no statistics for these queries."""
    if engine.dialect.name != "postgresql":
        return []
    stale = text(
        "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(:names) AND "
        "(coalesce(last_analyze, last_autoanalyze) IS NULL OR n_mod_since_analyze > 1000 + n_live_tup / 10)"
    )
    with engine.begin() as connection:
        names = list(connection.execute(stale, {"names": [t.name for t in tables]}).scalars())
        for name in names:
            connection.exec_driver_sql(f'ANALYZE "{name}"')
    return names


def merge_frame(
    engine: Engine,
    table: Table,
    frame: pd.DataFrame,
    key: Iterable[str],
    *,
    update_when_changed: Iterable[str] | None = None,
    replaces: ColumnElement[bool] | None = None,
    refuse_changed: Iterable[str] | None = None,
    history: tuple[Table, dict[str, Any]] | None = None,
) -> int:
    """Upsert a whole frame in one transaction through a staging table; returns rows deleted.

    The frame is bulk-loaded into a temporary table (COPY on PostgreSQL, executemany on SQLite),
    then merged with one INSERT ... SELECT ... ON CONFLICT. With `update_when_changed`, existing
    rows are only rewritten when one of those columns differs, so a replay changes nothing. With
    `replaces`, the frame is the complete content of that part of the table: its rows that are not
    in the frame are deleted in the same transaction (a re-scored interval leaves no stale rows).
    With `refuse_changed`, the table is a record: a row whose key is stored with other values in
    those columns fails the whole merge (RecordConflictError), and existing rows are never updated.
    With `history` (a table and the values of its extra columns), every row that the merge updates
    or deletes is first copied there whole, in the same transaction: nothing vanishes.
    """
    key = list(key)
    columns = [c.name for c in table.columns if not c.primary_key]
    missing = [c for c in columns if c not in frame.columns and not table.c[c].nullable]
    if missing:
        raise BadDataError(f"{table.name}: rows lack required column(s) {missing}")
    columns = [c for c in columns if c in frame.columns]
    duplicated = frame.duplicated(subset=key, keep=False)
    if duplicated.any():
        sample = frame.loc[duplicated, key].head(3).to_dict("records")
        raise BadDataError(f"{table.name}: {int(duplicated.sum())} rows share a key {key}, e.g. {sample}")
    insert = _dialect_insert(engine)
    is_postgres = engine.dialect.name == "postgresql"
    stage_options: dict[str, Any] = {"postgresql_on_commit": "DROP"} if is_postgres else {}
    stage = Table(
        f"stage_{table.name}_{uuid.uuid4().hex[:12]}",
        MetaData(),
        *[Column(c, table.c[c].type) for c in columns],
        # Indexed on the key: the stale-row delete probes the stage once per row of the scope.
        Index(f"ix_stage_{uuid.uuid4().hex[:12]}", *key),
        prefixes=["TEMPORARY"],
        **stage_options,
    )
    with engine.begin() as connection:
        stage.create(connection)
        try:
            insert_frame(connection, stage, frame[[c.name for c in stage.columns]])
            if refuse_changed is not None:
                _refuse_rewrites(connection, table, stage, key, list(refuse_changed))
            if history is not None:
                _keep_replaced_rows(connection, table, stage, key, update_when_changed, replaces, history)
            # WHERE true: SQLite needs it to parse INSERT ... SELECT ... ON CONFLICT.
            statement = insert(table).from_select(columns, select(*stage.c).where(true()))
            updated = [] if refuse_changed is not None else [c for c in columns if c not in key]
            where = None
            if update_when_changed is not None:
                where = or_(*[table.c[c].is_distinct_from(statement.excluded[c]) for c in update_when_changed])
            if updated:
                statement = statement.on_conflict_do_update(
                    index_elements=key, set_={c: statement.excluded[c] for c in updated}, where=where
                )
            else:
                statement = statement.on_conflict_do_nothing(index_elements=key)
            connection.execute(statement)
            deleted = 0
            if replaces is not None:
                in_frame = exists().where(and_(*[stage.c[k] == table.c[k] for k in key]))
                deleted = connection.execute(delete(table).where(replaces, ~in_frame)).rowcount
        finally:
            if not is_postgres:  # PostgreSQL drops it at commit or rollback
                stage.drop(connection)
    return int(deleted)


def _keep_replaced_rows(
    connection: Connection,
    table: Table,
    stage: Table,
    key: list[str],
    watched: Iterable[str] | None,
    replaces: ColumnElement[bool] | None,
    history: tuple[Table, dict[str, Any]],
) -> None:
    """Copy into the history table every row the merge is about to update (watched values differ) or delete."""
    target, extra = history
    same_key = [stage.c[k] == table.c[k] for k in key]
    watched = list(watched or [c.name for c in stage.columns if c.name not in key])
    unchanged = exists().where(*same_key, *[~table.c[c].is_distinct_from(stage.c[c]) for c in watched])
    in_frame = exists().where(*same_key)
    # In the replaced scope, every row the frame does not hold unchanged; elsewhere only updated rows.
    replaced = and_(replaces if replaces is not None else in_frame, ~unchanged)
    columns = [c.name for c in table.columns if c.name in target.c]
    extras = [literal(value, type_=target.c[name].type).label(name) for name, value in extra.items()]
    connection.execute(
        target.insert().from_select([*columns, *extra], select(*[table.c[c] for c in columns], *extras).where(replaced))
    )


def _refuse_rewrites(connection: Connection, table: Table, stage: Table, key: list[str], watched: list[str]) -> None:
    same_key = and_(*[stage.c[k] == table.c[k] for k in key])
    differs = or_(*[table.c[c].is_distinct_from(stage.c[c]) for c in watched])
    clashes = connection.execute(
        select(
            *[table.c[k] for k in key], *[table.c[c] for c in watched], *[stage.c[c].label(f"new_{c}") for c in watched]
        )
        .select_from(stage.join(table, same_key))
        .where(differs)
        .limit(3)
    ).mappings()
    samples = [dict(row) for row in clashes]
    if samples:
        raise RecordConflictError(
            f"{table.name}: rows already recorded under the same key {key} with other {watched} "
            f"(recorded vs new), e.g. {samples}; a recorded row is never rewritten",
            samples,
        )


def count_rows(engine: Engine, table: Table, model_name: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(table).where(table.c.model_name == model_name)
            ).scalar_one()
        )


BACKTEST_KEY = ("model_name", "cohort", "model_version", "scored_by", "slice_column", "slice_value")


def current_backtest(model_name: str, slice_column: str | None = None) -> Subquery:
    """The model's backtest rows that count: per cohort x version x scorer x slice, the one computed
    from the most labelled predictions (the latest `labels_as_of` on a tie). History stays in the table."""
    b = backtest_metrics
    rank = (
        func.row_number()
        .over(partition_by=[b.c[k] for k in BACKTEST_KEY], order_by=[b.c.n.desc(), b.c.labels_as_of.desc()])
        .label("rank_in_cohort")
    )
    ranked = select(b, rank).where(b.c.model_name == model_name)
    if slice_column is not None:
        ranked = ranked.where(b.c.slice_column == slice_column)
    subquery = ranked.subquery()
    return (
        select(*[subquery.c[c.name] for c in b.columns])
        .where(subquery.c.rank_in_cohort == 1)
        .subquery("current_backtest")
    )
