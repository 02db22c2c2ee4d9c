"""The tables' database: engines (SQLite pragmas, read-only opens), schema revisions by Alembic
(pipelines/storage/migrations), and the planner's statistics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    Table,
    create_engine,
    event,
    inspect,
    make_url,
    text,
)

from pipelines.core.errors import SchemaError


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
