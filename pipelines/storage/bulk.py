"""Bulk writes into the tables: each backend's fast path (COPY on PostgreSQL, batched executemany
elsewhere), upserts, and merges that never rewrite what was recorded."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Index,
    MetaData,
    Table,
    and_,
    delete,
    exists,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite

from pipelines.core.errors import BadDataError, ConfigError, RecordConflictError

if TYPE_CHECKING:  # imported where frames are written: the DAG files import this module's constants
    import pandas as pd


BATCH_ROWS = 10_000


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
