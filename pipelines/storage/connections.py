"""Storage settings from Airflow connections: the tables (postgres or sqlite) and the lake's S3 credentials.

Kept Airflow-free: pipelines.airflow.connections hands over the fields it reads from Airflow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import URL

from pipelines.core.errors import ConfigError
from pipelines.storage.lake import S3Options, open_lake
from pipelines.storage.settings import Settings, get_settings

# The Airflow connections tasks and the CLI read storage from, when they are defined.
TABLES_CONN_ID = os.environ.get("PIPELINES_TABLES_CONN_ID", "pipelines_tables")
LAKE_CONN_ID = os.environ.get("PIPELINES_LAKE_CONN_ID", "pipelines_lake")


@dataclass(frozen=True)
class ConnectionFields:
    """The parts of an Airflow connection we read; kept Airflow-free so pipelines/ never imports it."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: dict[str, Any] | None = None


def tables_url_from_connection(conn: ConnectionFields) -> str:
    """A SQLAlchemy URL for the tables from a `postgres` (or `sqlite`) Airflow connection."""
    kind = conn.conn_type.lower()
    if kind in {"postgres", "postgresql"}:
        if not conn.host or not conn.schema:
            raise ConfigError(
                f"Airflow connection '{conn.conn_id}': a postgres connection needs host and schema (the database)"
            )
        url = URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host,
            port=conn.port,
            database=conn.schema,
            query={k: str(v) for k, v in (conn.extra or {}).items() if k in {"sslmode", "application_name"}},
        )
        return url.render_as_string(hide_password=False)
    if kind == "sqlite":
        if not conn.host:
            raise ConfigError(f"Airflow connection '{conn.conn_id}': a sqlite connection needs host (the file path)")
        return f"sqlite:///{conn.host}"
    raise ConfigError(
        f"Airflow connection '{conn.conn_id}' has type '{conn.conn_type}'; the tables need 'postgres' or 'sqlite'"
    )


def s3_options_from_connection(conn: ConnectionFields) -> S3Options:
    """Credentials, endpoint (MinIO, moto) and region from an `aws` Airflow connection.

    Reads the fields the Amazon provider's AWS connection uses: login/password as the key pair,
    extra `endpoint_url` (or `service_config.s3.endpoint_url`), `region_name`, `aws_session_token`.
    """
    if conn.conn_type.lower() not in {"aws", "s3"}:
        raise ConfigError(f"Airflow connection '{conn.conn_id}' has type '{conn.conn_type}'; the lake needs 'aws'")
    extra = conn.extra or {}
    s3_config = extra.get("service_config", {}).get("s3", {})
    return S3Options(
        endpoint_url=s3_config.get("endpoint_url") or extra.get("endpoint_url") or None,
        access_key_id=conn.login or extra.get("aws_access_key_id") or None,
        secret_access_key=conn.password or extra.get("aws_secret_access_key") or None,
        session_token=extra.get("aws_session_token") or None,
        region_name=extra.get("region_name") or None,
    )


def with_connections(settings: Settings, tables: ConnectionFields | None, lake: ConnectionFields | None) -> Settings:
    """Settings whose tables URL and S3 credentials come from Airflow connections, where they are defined."""
    changes: dict[str, Any] = {}
    if tables is not None:
        changes["tables_url"] = tables_url_from_connection(tables)
        changes["tables_from"] = f"Airflow connection '{tables.conn_id}'"
    if lake is not None:
        changes["lake"] = open_lake(settings.lake.uri, s3_options_from_connection(lake))
        changes["lake_credentials_from"] = f"Airflow connection '{lake.conn_id}'"
    return replace(settings, **changes)


def settings_from_connections(get_connection: Callable[[str], ConnectionFields | None]) -> Settings:
    """Settings whose storage comes from the Airflow connections `get_connection` finds, as tasks read it.

    `pipelines_tables` (postgres) gives the tables URL; `pipelines_lake` (aws) gives the S3 or MinIO
    credentials and endpoint for an `s3://` PIPELINES_LAKE. Without them, the embedded defaults apply.
    """
    settings = get_settings()
    lake_conn = get_connection(LAKE_CONN_ID) if settings.lake.uri.startswith("s3://") else None
    return with_connections(settings, get_connection(TABLES_CONN_ID), lake_conn)
