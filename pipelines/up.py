"""`pipelines up`: Airflow standalone (API server, scheduler, DAG processor, triggerer) and the MLflow
UI, both on the pipelines home, until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.airflow.connections import cli_settings
from pipelines.config import apply_airflow_environment, migrate_airflow_db
from pipelines.tables import upgrade_schema

PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def wait_for_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status < 500:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    return False


def admin_password(airflow_home: Path, timeout_s: float = 60) -> str | None:
    path = airflow_home / PASSWORDS_FILE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return str(json.loads(path.read_text()).get("admin"))
        time.sleep(1)
    return None


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the same shutdown as Ctrl-C: stop both servers and wait for them


def main(airflow_port: int = 8080, mlflow_port: int = 5000) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    os.environ["AIRFLOW__API__PORT"] = str(airflow_port)
    os.environ["AIRFLOW__API__BASE_URL"] = f"http://localhost:{airflow_port}"
    settings = apply_airflow_environment()
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    migrate_airflow_db(settings)
    # The pipeline's own tables, where tasks will find them (an Airflow connection, else the default).
    upgrade_schema(cli_settings().tables_url)

    bin_dir = Path(sys.executable).parent
    # `airflow standalone` starts its components as `airflow ...` from PATH: make it this environment's.
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    processes = {
        "airflow": subprocess.Popen(
            [str(bin_dir / "airflow"), "standalone"],
            stdout=(logs / "airflow-standalone.log").open("ab"),
            stderr=subprocess.STDOUT,
        ),
        "mlflow": subprocess.Popen(
            [
                str(bin_dir / "mlflow"),
                "server",
                "--backend-store-uri",
                settings.mlflow_tracking_uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
            ],
            stdout=(logs / "mlflow-ui.log").open("ab"),
            stderr=subprocess.STDOUT,
        ),
    }
    try:
        airflow_url, mlflow_url = f"http://localhost:{airflow_port}", f"http://localhost:{mlflow_port}"
        if not wait_for_http(f"{airflow_url}/api/v2/monitor/health", 240):
            print(f"Airflow did not come up; see {logs / 'airflow-standalone.log'}", file=sys.stderr)
            return 1
        wait_for_http(mlflow_url, 120)
        password = admin_password(settings.airflow_home)
        print(f"Airflow UI: {airflow_url}   login: admin / {password}")
        print(f"MLflow UI:  {mlflow_url}")
        print(f"State:      {settings.home}   logs: {logs}")
        print("DAGs start paused: unpause or trigger them in the UI (pick a logical date with source data).")
        print("Ctrl-C stops both.", flush=True)
        while all(p.poll() is None for p in processes.values()):
            time.sleep(2)
        stopped = [name for name, p in processes.items() if p.poll() is not None]
        print(f"{', '.join(stopped)} stopped; see {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
