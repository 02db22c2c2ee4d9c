"""docker-compose.yml takes its settings from pipelines/dev/scaleout.py, as the distributed test does:
no Docker engine runs it here, so this checks the file against that one source."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.dev.scaleout import COMPOSE_STACK, TRAIN_QUEUE, mlflow_environment, stack_environment
from tests import REPO_ROOT

AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
WORKERS = ("airflow-worker", "worker-gpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text()))


def locked(package: str) -> str:
    lock = (REPO_ROOT / "uv.lock").read_text()
    match = re.search(rf'^name = "{re.escape(package)}"\nversion = "([^"]+)"', lock, re.MULTILINE)
    assert match, package
    return match.group(1)


def test_every_airflow_component_has_the_stack_environment(compose: dict[str, Any]) -> None:
    expected = stack_environment(COMPOSE_STACK)
    for name in (*AIRFLOW_SERVICES, *WORKERS, "airflow-init"):
        environment = {k: str(v) for k, v in compose["services"][name]["environment"].items()}
        differing = {k: (environment.get(k), v) for k, v in expected.items() if environment.get(k) != v}
        assert not differing, f"{name}: {differing}"


def test_the_mlflow_server_and_the_init_have_the_mlflow_environment(compose: dict[str, Any]) -> None:
    expected = mlflow_environment(COMPOSE_STACK)
    assert compose["services"]["mlflow"]["environment"] == expected
    init = compose["services"]["airflow-init"]
    assert {k: init["environment"][k] for k in expected} == expected
    assert init["command"][-1] == "pipelines init-stack"


def test_services_start_in_order_and_report_their_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name != "airflow-init":  # a one-shot job: its exit status is its health
            assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            wanted = "service_completed_successfully" if dependency == "airflow-init" else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} -> {dependency}"
    for name in (*AIRFLOW_SERVICES, *WORKERS, "mlflow"):
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name
    for name in WORKERS:
        assert {"airflow-apiserver", "mlflow", "redis"} <= set(services[name]["depends_on"]), name
    assert set(services["airflow-init"]["depends_on"]) == {"postgres", "minio"}


def test_the_gpu_worker_serves_the_train_queue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["airflow-worker"]["command"].split()[-2:] == ["--queues", "default"]
    assert services["worker-gpu"]["command"].split()[-2:] == ["--queues", TRAIN_QUEUE]
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_images_carry_the_locked_versions_and_drivers() -> None:
    airflow = (REPO_ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert f"FROM apache/airflow:{locked('apache-airflow')}-python3.11" in airflow
    # Our built wheel (its dependencies bring the drivers), never the source tree: the project is mounted.
    assert f'"apache-airflow=={locked("apache-airflow")}" /tmp/dist/pipelines-*.whl' in airflow
    assert "pip wheel" in airflow and "COPY --chown=airflow:root . " not in airflow
    assert "chown airflow:root /data/pipelines" in airflow  # the shared home's volume is writable by the tasks
    assert {".venv", ".git", ".pipelines"} <= set((REPO_ROOT / ".dockerignore").read_text().split())
    mlflow = (REPO_ROOT / "docker" / "mlflow.Dockerfile").read_text()
    for package in ("mlflow", "psycopg", "boto3"):  # the server, its PostgreSQL store, its S3 artifacts
        assert f"{package}{'[binary]' if package == 'psycopg' else ''}=={locked(package)}" in mlflow, package


def test_the_buckets_and_databases_the_stack_names_are_the_ones_init_creates() -> None:
    airflow, mlflow = stack_environment(COMPOSE_STACK), mlflow_environment(COMPOSE_STACK)
    databases = [airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], airflow["PIPELINES_TABLES_URL"]]
    databases.append(mlflow["MLFLOW_BACKEND_STORE_URI"])
    assert [url.rsplit("/", 1)[1] for url in databases] == ["airflow", "pipelines", "mlflow"]
    assert (
        airflow["PIPELINES_LAKE"].startswith("s3://lake/") and mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow/"
    )
    assert Path(REPO_ROOT / "docker-compose.yml").read_text().count("local-development-secret-change-me") == 2


def test_the_project_is_mounted_and_the_plugin_comes_from_the_wheel(compose: dict[str, Any]) -> None:
    for name in (*AIRFLOW_SERVICES, *WORKERS, "airflow-init"):
        service = compose["services"][name]
        environment = service["environment"]
        assert environment["PIPELINES_PROJECT"] == "/opt/project", name
        assert environment["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/project/dags", name
        assert "AIRFLOW__CORE__PLUGINS_FOLDER" not in environment, name  # the entry point registers it
        mounts = {volume.split(":")[1] for volume in service["volumes"]}
        assert {"/opt/project/dags", "/opt/project/expectations"} <= mounts, name
