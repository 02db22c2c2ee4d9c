"""Where state lives. Everything derives from one home folder so the demo never touches ~/airflow."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import URL

from pipelines.errors import ConfigError
from pipelines.lake import Lake, S3Options, open_lake

REPO_ROOT = Path(__file__).resolve().parents[1]


AIRFLOW_SQLITE_CONNECT_ARGS = {"timeout": 60}


@dataclass(frozen=True)
class Settings:
    home: Path
    lake: Lake
    source: Path
    specs_dir: Path
    tables_url: str
    mlflow_tracking_uri: str
    mlflow_artifacts: Path | None  # None: a tracking server's own artifact store (its --artifacts-destination)
    gx_root: Path
    tables_from: str = "the embedded default"  # where tables_url came from, for the CLI to say
    lake_credentials_from: str = "the environment (boto3's default chain)"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def mlflow_artifacts(home: Path) -> Path | None:
    """Where new experiments keep their artifacts: PIPELINES_MLFLOW_ARTIFACTS, else the tracking
    server's store when MLFLOW_TRACKING_URI names a server (workers on other machines upload through
    it), else next to our other state."""
    if explicit := os.environ.get("PIPELINES_MLFLOW_ARTIFACTS"):
        return Path(explicit)
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        return None
    return home / "mlflow" / "artifacts"


def get_settings() -> Settings:
    """Read settings from the environment; every value has an embedded default under PIPELINES_HOME."""
    home = Path(os.environ.get("PIPELINES_HOME", REPO_ROOT / ".pipelines")).resolve()
    tables_from = "PIPELINES_TABLES_URL" if os.environ.get("PIPELINES_TABLES_URL") else "the embedded default"
    return Settings(
        home=home,
        lake=open_lake(os.environ.get("PIPELINES_LAKE", str(home / "lake"))),
        source=Path(os.environ.get("PIPELINES_SOURCE", home / "source")),
        specs_dir=Path(os.environ.get("PIPELINES_SPECS_DIR", REPO_ROOT / "dags" / "models")),
        tables_url=os.environ.get("PIPELINES_TABLES_URL", f"sqlite:///{home / 'tables.db'}"),
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
        mlflow_artifacts=mlflow_artifacts(home),
        gx_root=home / "gx",
        tables_from=tables_from,
    )


DEMO_WAREHOUSE_CONN_ID = "pipelines_demo_warehouse"

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


def airflow_environment(settings: Settings) -> dict[str, str]:
    """Airflow config for the embedded default: SQLite metadata DB, LocalExecutor, our dags/ and plugins/."""
    airflow_home = settings.airflow_home
    return {
        "PIPELINES_HOME": str(settings.home),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        # Scheduler, DAG processor, triggerer and API server share one SQLite file: wait for a lock
        # instead of failing at once (the default is 5 s, which a busy 2-core machine exceeds).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "pipelines.config.AIRFLOW_SQLITE_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "pipelines.config.AIRFLOW_SQLITE_CONNECT_ARGS",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__PORT": "8080",
        # Where `pipelines up` serves the UI by default: a version trained by `pipelines demo` or
        # `pipelines run` links back to its Airflow run there (`up --airflow-port` sets its own).
        "AIRFLOW__API__BASE_URL": "http://localhost:8080",
        # MLflow imports GitPython, which warns loudly on machines without git.
        "GIT_PYTHON_REFRESH": "quiet",
        # The demo_orders model's SQL warehouse (a SQLite file `pipelines demo` writes), as an Airflow
        # connection; define your own connections in the UI, a secrets backend or AIRFLOW_CONN_*.
        f"AIRFLOW_CONN_{DEMO_WAREHOUSE_CONN_ID.upper()}": json.dumps(
            {"conn_type": "sqlite", "host": str(settings.source / "demo_orders" / "warehouse.db")}
        ),
    }


def apply_airflow_environment(settings: Settings | None = None) -> Settings:
    """Set the Airflow variables in this process unless the user already set them. Call before importing airflow."""
    settings = settings or get_settings()
    defaults = airflow_environment(settings)
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in os.environ:  # the user's own database: no SQLite lock waits
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"):
            defaults.pop(key)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    return settings


def migrate_airflow_db(settings: Settings) -> None:
    """`airflow db migrate`, then WAL journaling on the embedded SQLite database.

    WAL lets readers (the UI, the DAG processor) work while the scheduler writes; without it
    Airflow's processes fail with 'database is locked' under load. The mode persists in the file.
    """
    import sqlite3
    import subprocess
    import sys

    if airflow_db_is_current():
        return
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def airflow_db_is_current() -> bool:
    """Whether Airflow's metadata database already has every migration of the installed Airflow
    (`airflow db check-migrations`, in this process): then `pipelines run` skips the ~5 s of a
    `db migrate` subprocess. A database that is new, behind or unreachable answers False."""
    from airflow.utils.db import check_migrations
    from sqlalchemy.exc import SQLAlchemyError

    try:
        check_migrations(timeout=1)
    except (TimeoutError, SQLAlchemyError):
        return False
    return True


def git_sha() -> str:
    """The commit of the code that runs, for lineage; 'unknown' outside a git checkout."""
    import subprocess

    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()
