"""The embedded Airflow: its environment on the pipelines home (SQLite metadata, LocalExecutor, the
project's DAGs folder) and its metadata database, for `pipelines run`, `demo`, `up` and the tests.
A deployment's own Airflow sets its own configuration and never calls this."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipelines.core.project import PROJECT_VARIABLE
from pipelines.storage.settings import Settings, get_settings

AIRFLOW_SQLITE_CONNECT_ARGS = {"timeout": 60}


def airflow_environment(settings: Settings, connections: Mapping[str, str] | None = None) -> dict[str, str]:
    """Airflow config for the embedded default: SQLite metadata DB, LocalExecutor, the project's dags/.

    The plugin comes from the package's `airflow.plugins` entry point, not a plugins folder.
    `connections`: AIRFLOW_CONN_* variables to define too (the demo's warehouse, say).
    """
    airflow_home = settings.airflow_home
    return {
        "PIPELINES_HOME": str(settings.home),
        # Task processes start wherever the executor starts them: name the project, not the cwd.
        PROJECT_VARIABLE: str(settings.project.root),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.project.dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        # Scheduler, DAG processor, triggerer and API server share one SQLite file: wait for a lock
        # instead of failing at once (the default is 5 s, which a busy 2-core machine exceeds).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "pipelines.airflow.embedded.AIRFLOW_SQLITE_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "pipelines.airflow.embedded.AIRFLOW_SQLITE_CONNECT_ARGS",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__PORT": "8080",
        # Where `pipelines up` serves the UI by default: a version trained by `pipelines demo` or
        # `pipelines run` links back to its Airflow run there (`up --airflow-port` sets its own).
        "AIRFLOW__API__BASE_URL": "http://localhost:8080",
        # MLflow imports GitPython, which warns loudly on machines without git.
        "GIT_PYTHON_REFRESH": "quiet",
        **(connections or {}),
    }


def apply_airflow_environment(
    settings: Settings | None = None, connections: Mapping[str, str] | None = None
) -> Settings:
    """Set the Airflow variables in this process unless the user already set them. Call before importing airflow."""
    settings = settings or get_settings()
    defaults = airflow_environment(settings, connections)
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
