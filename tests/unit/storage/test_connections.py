"""Storage settings from Airflow connection fields: the tables' URL and the lake's S3 options."""

from pathlib import Path

import pytest

from pipelines.core.errors import ConfigError
from pipelines.storage.connections import (
    ConnectionFields,
    s3_options_from_connection,
    tables_url_from_connection,
    with_connections,
)
from pipelines.storage.lake import LocalLake, S3Lake
from pipelines.storage.settings import get_settings


def test_postgres_connection_gives_a_psycopg_url_with_escaped_password() -> None:
    conn = ConnectionFields("pipelines_tables", "postgres", "db.internal", 5433, "svc", "p@ss/word", "pipelines")
    assert tables_url_from_connection(conn) == "postgresql+psycopg://svc:p%40ss%2Fword@db.internal:5433/pipelines"


def test_bad_tables_connections_are_named() -> None:
    with pytest.raises(
        ConfigError, match="'pipelines_tables' has type 'mysql'; the tables need 'postgres' or 'sqlite'"
    ):
        tables_url_from_connection(ConnectionFields("pipelines_tables", "mysql", "h"))
    with pytest.raises(ConfigError, match="needs host and schema"):
        tables_url_from_connection(ConnectionFields("pipelines_tables", "postgres", "h"))


def test_aws_connection_gives_credentials_endpoint_and_region() -> None:
    conn = ConnectionFields(
        "pipelines_lake",
        "aws",
        login="AKIA",
        password="secret",
        extra={"service_config": {"s3": {"endpoint_url": "http://minio:9000"}}, "region_name": "eu-west-1"},
    )
    options = s3_options_from_connection(conn)
    assert (options.endpoint_url, options.access_key_id, options.secret_access_key, options.region_name) == (
        "http://minio:9000",
        "AKIA",
        "secret",
        "eu-west-1",
    )
    assert "secret" not in repr(options)  # credentials stay out of logs
    with pytest.raises(ConfigError, match="the lake needs 'aws'"):
        s3_options_from_connection(ConnectionFields("pipelines_lake", "postgres"))


def test_connections_override_only_what_they_define(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINES_LAKE", "s3://bucket/prefix")
    settings = get_settings()
    lake_conn = ConnectionFields("pipelines_lake", "aws", login="k", password="s", extra={"endpoint_url": "http://x"})
    changed = with_connections(settings, None, lake_conn)
    assert changed.tables_url == settings.tables_url
    assert isinstance(changed.lake, S3Lake) and changed.lake.uri == "s3://bucket/prefix"
    assert changed.lake.options.endpoint_url == "http://x"
    monkeypatch.setenv("PIPELINES_LAKE", str(tmp_path))
    assert isinstance(get_settings().lake, LocalLake)
