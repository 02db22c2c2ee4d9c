"""The scale-out deployment's settings, from one place: docker-compose.yml and the distributed test
both take theirs from `stack_environment` (a test checks the compose file against it).

Airflow on PostgreSQL with the CeleryExecutor (Redis broker), an MLflow tracking server with a
PostgreSQL backend store and S3 artifacts, the lake on S3 and the tables on PostgreSQL, reached by
tasks through the `pipelines_tables` and `pipelines_lake` Airflow connections.
`pipelines init-stack` prepares such a stack: databases, buckets, Airflow's and our schema.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlparse

from pipelines.core.errors import ConfigError

TRAIN_QUEUE = "train"  # the GPU worker's queue; a spec's training.queue sends its train task there


@dataclass(frozen=True)
class Stack:
    """Where each server of a scale-out deployment is, as every component reaches it."""

    postgres_host: str
    postgres_port: int
    postgres_user: str
    postgres_password: str
    redis_url: str  # the Celery broker
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    mlflow_url: str
    airflow_url: str  # where users reach the UI: links to Airflow runs are made with it
    execution_api_url: str  # where workers reach the API server's execution API
    secret: str  # shared by every Airflow component: signs task tokens and log requests
    airflow_database: str = "airflow"
    tables_database: str = "pipelines"
    mlflow_database: str = "mlflow"
    lake: str = "s3://lake/pipelines"
    mlflow_bucket: str = "mlflow"
    s3_region: str = "us-east-1"

    def postgres_url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        user = quote(self.postgres_user, safe="")
        password = f":{quote(self.postgres_password, safe='')}" if self.postgres_password else ""
        return f"{driver}://{user}{password}@{self.postgres_host}:{self.postgres_port}/{database}"


# docker-compose.yml's stack: its service names as hosts, and local development placeholders for
# credentials (change them, and the secret, for anything but a laptop).
COMPOSE_STACK = Stack(
    postgres_host="postgres",
    postgres_port=5432,
    postgres_user="airflow",
    postgres_password="airflow",
    redis_url="redis://redis:6379/0",
    s3_endpoint="http://minio:9000",
    s3_access_key="minioadmin",
    s3_secret_key="minioadmin",
    mlflow_url="http://mlflow:5000",
    airflow_url="http://localhost:8080",
    execution_api_url="http://airflow-apiserver:8080/execution/",
    secret="local-development-secret-change-me",
)


def stack_environment(stack: Stack) -> dict[str, str]:
    """The environment of every Airflow component (API server, scheduler, DAG processor, triggerer,
    Celery workers) and of the `pipelines` CLI in a scale-out deployment."""
    airflow_db = stack.postgres_url(stack.airflow_database)
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        # psycopg 3 is async too; Airflow would otherwise look for asyncpg.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": airflow_db,
        "AIRFLOW__CELERY__BROKER_URL": stack.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": stack.execution_api_url,
        "AIRFLOW__API__BASE_URL": stack.airflow_url,
        "AIRFLOW__API__SECRET_KEY": stack.secret,
        "AIRFLOW__API_AUTH__JWT_SECRET": stack.secret,
        # Tasks find their storage through these Airflow connections (a secrets backend in production).
        "AIRFLOW_CONN_PIPELINES_TABLES": json.dumps(
            {
                "conn_type": "postgres",
                "host": stack.postgres_host,
                "port": stack.postgres_port,
                "login": stack.postgres_user,
                "password": stack.postgres_password,
                "schema": stack.tables_database,
            }
        ),
        "AIRFLOW_CONN_PIPELINES_LAKE": json.dumps(
            {
                "conn_type": "aws",
                "login": stack.s3_access_key,
                "password": stack.s3_secret_key,
                "extra": {"endpoint_url": stack.s3_endpoint, "region_name": stack.s3_region},
            }
        ),
        "PIPELINES_LAKE": stack.lake,
        "PIPELINES_TABLES_URL": stack.postgres_url(stack.tables_database),  # for the pipelines CLI
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
    }


def mlflow_environment(stack: Stack) -> dict[str, str]:
    """The MLflow tracking server's environment (`mlflow server` reads its stores from it): the
    PostgreSQL backend store, and artifacts proxied to the S3 bucket, so that clients upload through
    the server and need no S3 credentials."""
    return {
        # MLflow answers only localhost by default: workers call it by its service name.
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"{urlparse(stack.mlflow_url).netloc},localhost:*,127.0.0.1:*",
        "MLFLOW_BACKEND_STORE_URI": stack.postgres_url(stack.mlflow_database),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{stack.mlflow_bucket}/",
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": stack.s3_secret_key,
        "AWS_DEFAULT_REGION": stack.s3_region,
    }


def create_databases(urls: list[str]) -> list[str]:
    """The databases of these PostgreSQL URLs that did not exist yet, created; returns their names."""
    import psycopg
    from psycopg import sql
    from sqlalchemy import make_url

    created = []
    for url in urls:
        target = make_url(url)
        if not target.database:
            raise ConfigError(f"{target.render_as_string(hide_password=True)} names no database")
        admin = target.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        try:
            connection = psycopg.connect(admin, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise ConfigError(f"PostgreSQL at {target.host}:{target.port} is not reachable: {exc}") from exc
        with connection:
            name = target.database
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(str(name))
    return created


def create_buckets(uris: list[str], env: Mapping[str, str]) -> list[str]:
    """The buckets of these s3:// URIs that did not exist yet, created (at MLFLOW_S3_ENDPOINT_URL,
    with the AWS_* credentials of `env`: the stack has one S3, which the lake connection names too);
    returns their names."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env.get("MLFLOW_S3_ENDPOINT_URL"),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION"),
    )
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    wanted = list(dict.fromkeys(uri.removeprefix("s3://").partition("/")[0] for uri in uris))
    created = [name for name in wanted if name not in existing]
    for name in created:
        s3.create_bucket(Bucket=name)
    return created


def create_users(env: Mapping[str, str]) -> str | None:
    """The users of Airflow's simple auth manager (`user:role,...`), each with a new random password in
    its passwords file, unless that file exists; returns the file written."""
    path = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    users = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "")
    if not path or not users or os.path.exists(path):
        return None
    passwords = {user.partition(":")[0].strip(): secrets.token_urlsafe(12) for user in users.split(",") if user.strip()}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as file:
        json.dump(passwords, file)  # readable by its owner only
    return path


INIT_VARIABLES = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "PIPELINES_TABLES_URL",
    "MLFLOW_BACKEND_STORE_URI",
    "PIPELINES_LAKE",
    "MLFLOW_ARTIFACTS_DESTINATION",
)


def init_stack(env: Mapping[str, str]) -> None:
    """What a fresh scale-out stack needs before its servers start, from the environment of
    `stack_environment` and `mlflow_environment`: the three databases, the two buckets, our tables'
    schema and Airflow's. Safe to run again (each step skips what exists)."""
    from pipelines.storage.database import upgrade_schema

    missing = [name for name in INIT_VARIABLES if not env.get(name)]
    if missing:
        raise ConfigError(f"init-stack needs {', '.join(missing)} (see pipelines/dev/scaleout.py)")
    databases = [
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        env["PIPELINES_TABLES_URL"],
        env["MLFLOW_BACKEND_STORE_URI"],
    ]
    print(f"databases created: {create_databases(databases) or 'none, all exist'}", flush=True)
    buckets = create_buckets([env["PIPELINES_LAKE"], env["MLFLOW_ARTIFACTS_DESTINATION"]], env)
    print(f"buckets created: {buckets or 'none, all exist'}", flush=True)
    before, after = upgrade_schema(env["PIPELINES_TABLES_URL"])
    print(f"pipelines tables: {before or 'empty'} -> {after}", flush=True)
    if passwords := create_users(env):
        print(f"Airflow users created, passwords in {passwords}", flush=True)
    # Airflow's migration in a process of its own: this one may have imported Airflow with other settings.
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, env={**os.environ, **env})
    print("airflow metadata database migrated", flush=True)
