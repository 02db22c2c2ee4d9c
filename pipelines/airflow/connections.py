"""Storage from Airflow connections, read the same way by tasks and by the `pipelines` CLI.

A task asks the Task SDK (the Execution API, secrets backends, AIRFLOW_CONN_* variables). The CLI
runs outside any task, so it asks the same chain the scheduler does: AIRFLOW_CONN_* variables,
secrets backends, then the metadata database (connections made in the UI).
"""

from __future__ import annotations

from typing import Any

from pipelines.storage.connections import ConnectionFields, settings_from_connections
from pipelines.storage.settings import Settings


def _fields(conn_id: str, conn: Any) -> ConnectionFields:
    return ConnectionFields(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=conn.host,
        port=conn.port,
        login=conn.login,
        password=conn.password,
        schema=conn.schema,
        extra=conn.extra_dejson,
    )


def task_connection(conn_id: str) -> ConnectionFields | None:
    """An Airflow connection as a running task sees it; None when none has that id."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return _fields(conn_id, Connection.get(conn_id))
    except AirflowNotFoundException:
        return None


def _metadata_db_ready() -> bool:
    """Whether Airflow's metadata database exists yet (a new pipelines home has none until the first run)."""
    import os
    from pathlib import Path

    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    return not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists()


def cli_connection(conn_id: str) -> ConnectionFields | None:
    """An Airflow connection as the scheduler sees it; None when none has that id."""
    import logging

    from airflow.models.connection import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    if not _metadata_db_ready():  # only AIRFLOW_CONN_* variables can define one yet
        found = EnvironmentVariablesBackend().get_connection(conn_id)
        return None if found is None else _fields(conn_id, found)
    # A backend that cannot answer is skipped with a logged traceback; the lookup's outcome says enough.
    logging.getLogger("airflow.models.connection").setLevel(logging.CRITICAL)
    try:
        return _fields(conn_id, Connection.get_connection_from_secrets(conn_id))
    except AirflowNotFoundException:
        return None


def task_settings() -> Settings:
    return settings_from_connections(task_connection)


def cli_settings() -> Settings:
    """The storage tasks use, for the CLI: Airflow connections where defined, else the embedded defaults."""
    from pipelines.airflow.embedded import apply_airflow_environment

    apply_airflow_environment()  # the pipelines home's Airflow, unless AIRFLOW_HOME says otherwise
    return settings_from_connections(cli_connection)
