"""The project's tables (SQLAlchemy 2 Core). SQLite by default, PostgreSQL at scale, same code."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("score", Float, nullable=False),
    Column("features_sha256", String(64), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    Column("scored_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "entity_id", "as_of", name="uq_predictions_key"),
)

labels = Table(
    "labels",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("label", Float, nullable=False),
    Column("arrived_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "entity_id", "as_of", name="uq_labels_key"),
)

backtest_metrics = Table(
    "backtest_metrics",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("cohort", String(10), nullable=False),  # the as_of date, YYYY-MM-DD
    Column("model_version", String(32), nullable=False),
    Column("n", Integer, nullable=False),
    Column("positives", Integer, nullable=False),
    Column("auc", Float),
    Column("logloss", Float),
    Column("brier", Float),
    Column("mean_score", Float),
    Column("labels_as_of", DateTime(timezone=True), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    UniqueConstraint("model_name", "cohort", "model_version", name="uq_backtest_key"),
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
    Column("report_path", Text, nullable=False),
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


def make_engine(url: str) -> Engine:
    """The engine every stage uses; it creates any missing table, so callers never have to."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    ensure_tables(engine)
    return engine


def ensure_tables(engine: Engine) -> None:
    metadata.create_all(engine)
    _add_new_nullable_columns(engine)


def _add_new_nullable_columns(engine: Engine) -> None:
    """Tables made by an older version lack columns added since; add them (only nullable ones are ever added)."""
    present = inspect(engine)
    for table in metadata.sorted_tables:
        existing = {column["name"] for column in present.get_columns(table.name)}
        for column in table.columns:
            if column.name not in existing and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def upsert(
    engine: Engine,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: Iterable[str],
    update_when_changed: Iterable[str] | None = None,
) -> None:
    """Insert rows; on a key clash update the other columns.

    With `update_when_changed`, an existing row is only rewritten when one of those columns
    differs, so replaying the same rows leaves the table byte-for-byte unchanged. Rows go in
    batches of BATCH_ROWS through the driver's executemany (sqlite3's C loop, psycopg's pipeline
    mode) inside one transaction, never as one statement per Python call.
    """
    if not rows:
        return
    key = list(key)
    dialect = engine.dialect.name
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert  # type: ignore[assignment]
    else:
        raise ValueError(f"unsupported tables backend '{dialect}': use SQLite or PostgreSQL")
    statement = insert(table)
    updated = [c.name for c in table.columns if c.name not in key and not c.primary_key]
    where = None
    if update_when_changed is not None:
        where = or_(*[table.c[name].is_distinct_from(statement.excluded[name]) for name in update_when_changed])
    statement = statement.on_conflict_do_update(
        index_elements=key, set_={name: statement.excluded[name] for name in updated}, where=where
    )
    with engine.begin() as connection:
        for offset in range(0, len(rows), BATCH_ROWS):
            connection.execute(statement, list(rows[offset : offset + BATCH_ROWS]))


def count_rows(engine: Engine, table: Table, model_name: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(table).where(table.c.model_name == model_name)
            ).scalar_one()
        )
