"""Every test session gets its own pipelines home (and so its own Airflow, MLflow, lake and tables).

The environment is set here, at import time, because Airflow reads its configuration when it is
first imported.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

SESSION_HOME = Path(tempfile.mkdtemp(prefix="pipelines-test-"))
os.environ["PIPELINES_HOME"] = str(SESSION_HOME)
os.environ["PIPELINES_TASK_RETRIES"] = "0"
# The repository is the example project the tests run on, wherever pytest starts.
os.environ["PIPELINES_PROJECT"] = str(Path(__file__).resolve().parents[1])
for variable in ("MLFLOW_TRACKING_URI", "PIPELINES_LAKE", "PIPELINES_SOURCE", "PIPELINES_TABLES_URL"):
    os.environ.pop(variable, None)

from pipelines.airflow.embedded import apply_airflow_environment, migrate_airflow_db  # noqa: E402
from pipelines.dev.demo_data import demo_connections  # noqa: E402
from pipelines.storage.database import upgrade_schema  # noqa: E402
from pipelines.storage.lake import S3Options  # noqa: E402
from pipelines.storage.settings import Settings, get_settings  # noqa: E402

apply_airflow_environment(get_settings(), demo_connections(get_settings().source))

POSTGRES_URL = os.environ.get("PIPELINES_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_configure(config: pytest.Config) -> None:
    from tests.servers import install

    install()  # SIGTERM to pytest stops every server a test started


def world_of(nodeid: str) -> str:
    """Which worker process of a parallel run (`pytest -n 2`) runs a test: the integration modules
    (Airflow in this process, `dag.test()`) on one, the e2e modules (servers in their own processes),
    the DAG integrity and the unit tests on the other. Each world keeps the order a serial run gives,
    so a module has the same predecessors in its process as under plain `pytest`. (On 2 cores the
    integration world ended 10 minutes after the other: the suite is CPU-bound, see docs/testing.md.)"""
    return "integration" if nodeid.startswith("tests/integration/") else "servers-and-unit"


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByWorld(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return world_of(nodeid)

    return ByWorld(config, log)


def needs_server(what: str, exc: Exception) -> NoReturn:
    """Skip a test whose server is not running here; CI sets PIPELINES_REQUIRE_SERVERS=1 to fail instead."""
    if os.environ.get("PIPELINES_REQUIRE_SERVERS") == "1":
        raise RuntimeError(f"{what} is required (PIPELINES_REQUIRE_SERVERS=1) but not reachable: {exc}") from exc
    pytest.skip(f"needs {what}, not reachable here: {exc}")


@contextmanager
def postgres_database(prefix: str = "pipelines_test") -> Iterator[str]:
    """A database of its own on the PostgreSQL server, dropped afterwards."""
    import psycopg
    from sqlalchemy import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        needs_server(f"the PostgreSQL server at {make_url(POSTGRES_URL).render_as_string(hide_password=True)}", exc)
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    options: S3Options

    def new_bucket(self) -> str:
        import boto3

        name = f"lake-{uuid.uuid4().hex[:10]}"
        boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.options.access_key_id,
            aws_secret_access_key=self.options.secret_access_key,
            region_name=self.options.region_name,
        ).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A real S3 HTTP endpoint: moto in server mode on a free local port, for this test session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield S3Endpoint(url, S3Options(url, "testing-key", "testing-secret", None, "us-east-1"))
    server.stop()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database under the session home."""
    migrate_airflow_db(get_settings())
    return SESSION_HOME / "airflow" / "airflow.db"


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point lake, source, tables and MLflow at an empty folder for one test."""
    monkeypatch.setenv("PIPELINES_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("PIPELINES_SOURCE", str(tmp_path / "source"))
    monkeypatch.setenv("PIPELINES_TABLES_URL", f"sqlite:///{tmp_path / 'tables.db'}")
    upgrade_schema(f"sqlite:///{tmp_path / 'tables.db'}")
    yield tmp_path


@contextmanager
def module_home(root: Path) -> Iterator[Settings]:
    """Lake, source, tables, MLflow store and artifacts of one test module under `root` (Airflow is shared)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINES_LAKE", str(root / "lake"))
        patch.setenv("PIPELINES_SOURCE", str(root / "source"))
        patch.setenv("PIPELINES_TABLES_URL", f"sqlite:///{root / 'tables.db'}")
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("PIPELINES_MLFLOW_ARTIFACTS", str(root / "artifacts"))
        upgrade_schema(f"sqlite:///{root / 'tables.db'}")
        yield get_settings()
