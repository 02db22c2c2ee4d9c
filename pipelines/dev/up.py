"""`pipelines up`: Airflow standalone (API server, scheduler, DAG processor, triggerer) and the MLflow
UI, both on the pipelines home, until Ctrl-C or SIGTERM.

Each server runs in its own process group, so stopping `up` (Ctrl-C, SIGTERM, a failed start) stops
every process the servers started too, not only the two it started itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipelines.airflow.connections import cli_settings
from pipelines.airflow.embedded import apply_airflow_environment, migrate_airflow_db
from pipelines.core.errors import ConfigError
from pipelines.dev.demo_data import demo_connections
from pipelines.storage.database import upgrade_schema
from pipelines.storage.settings import Settings, get_settings

PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
LOG_FILES = {"airflow": "airflow-standalone.log", "mlflow": "mlflow-ui.log"}  # under <home>/logs
STOP_GRACE_S = 30  # how long a server gets to stop after SIGTERM before its whole group is killed


@dataclass(frozen=True)
class Ports:
    """Every port `up` listens on. 0 asks for a free one."""

    airflow: int = 8080
    mlflow: int = 5000
    worker_logs: int = 0  # Airflow's worker log server (8793 by default in Airflow)
    trigger_logs: int = 0  # Airflow's triggerer log server (8794 by default in Airflow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim(port: int, option: str) -> int:
    """The port to use: a free one for 0, else the given one if nothing listens there."""
    if port == 0:
        return free_port()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            raise ConfigError(f"port {port} is in use: pick another with {option} (0 picks a free one)") from None
    return port


def airflow_ready(url: str) -> bool:
    """Airflow's own health report: the API server answers and its scheduler, DAG processor and
    triggerer report a recent heartbeat."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=10) as response:
            health = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return all(
        (health.get(part) or {}).get("status") == "healthy"
        for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")
    )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return bool(response.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def admin_password(airflow_home: Path) -> str | None:
    path = airflow_home / PASSWORDS_FILE
    return str(json.loads(path.read_text()).get("admin")) if path.exists() else None


def stop_groups(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each server's whole process group, and to every process it started that left the
    group (Airflow's task workers start sessions of their own); then SIGKILL to whatever is left."""
    import psutil

    family: list[psutil.Process] = []
    for process in processes.values():
        with contextlib.suppress(psutil.Error):
            family += psutil.Process(process.pid).children(recursive=True)
    for process in processes.values():
        _signal_group(process, signal.SIGTERM)
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    _, lingering = psutil.wait_procs(family, timeout=max(deadline - time.monotonic(), 0.1))
    # The leader may be gone while a child it started lingers (a scheduler ignoring SIGTERM, say).
    for process in processes.values():
        _signal_group(process, signal.SIGKILL)
        process.wait()
    for member in lingering:
        with contextlib.suppress(psutil.Error):
            member.kill()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)  # the group's id is the leader's pid (start_new_session)


def _stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the same shutdown as Ctrl-C


def wait_until_ready(
    processes: dict[str, subprocess.Popen[bytes]], airflow_url: str, start_timeout_s: float | None
) -> str | None:
    """Wait for Airflow's health report, as long as the servers live; None when ready, else why not."""
    started = time.monotonic()
    next_note = started + 60
    while not airflow_ready(airflow_url):
        dead = [name for name, p in processes.items() if p.poll() is not None]
        if dead:
            return f"{', '.join(dead)} exited while starting"
        waited = time.monotonic() - started
        if start_timeout_s is not None and waited > start_timeout_s:
            return f"Airflow was not healthy within --start-timeout {start_timeout_s:g} s"
        if time.monotonic() > next_note:
            print(f"still starting ({waited:.0f} s): waiting for Airflow's health report", flush=True)
            next_note += 60
        time.sleep(2)
    return None


LIVE_FEED_EVERY_S = 30


def feed_demo(settings: Settings, stop: threading.Event) -> None:
    """Keep the demo sources up to the current hour while `up` runs, so scheduled runs find data."""
    from pipelines.dev.demo import feed_live

    while True:
        try:
            for line in feed_live(settings, datetime.now(UTC)):
                print(f"live demo source: wrote {line}", flush=True)
        except Exception as exc:  # the feed is a convenience: say what went wrong and keep serving
            print(f"live demo source: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if stop.wait(LIVE_FEED_EVERY_S):
            return


def main(ports: Ports = Ports(), start_timeout_s: float | None = None, live_demo: bool = True) -> int:
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    try:
        airflow_port = claim(ports.airflow, "--airflow-port")
        mlflow_port = claim(ports.mlflow, "--mlflow-port")
        worker_logs = claim(ports.worker_logs, "--worker-log-port")
        trigger_logs = claim(ports.trigger_logs, "--trigger-log-port")
    except ConfigError as exc:
        print(f"pipelines up: {exc}", file=sys.stderr)
        return 2
    airflow_url, mlflow_url = f"http://localhost:{airflow_port}", f"http://localhost:{mlflow_port}"
    os.environ["AIRFLOW__API__PORT"] = str(airflow_port)
    os.environ["AIRFLOW__API__BASE_URL"] = airflow_url
    os.environ["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(worker_logs)
    os.environ["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(trigger_logs)
    os.environ["PIPELINES_MLFLOW_UI_URL"] = mlflow_url  # the Models page links MLflow runs there
    settings = get_settings()
    apply_airflow_environment(settings, demo_connections(settings.source))
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    migrate_airflow_db(settings)
    # The pipeline's own tables, where tasks will find them (an Airflow connection, else the default).
    upgrade_schema(cli_settings().tables_url)

    bin_dir = Path(sys.executable).parent
    # `airflow standalone` starts its components as `airflow ...` from PATH: make it this environment's.
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    commands = {
        "airflow": [str(bin_dir / "airflow"), "standalone"],
        "mlflow": [
            str(bin_dir / "mlflow"),
            "server",
            "--backend-store-uri",
            settings.mlflow_tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
        ],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stop_feed = threading.Event()
    if live_demo:
        threading.Thread(target=feed_demo, args=(settings, stop_feed), daemon=True, name="live-demo").start()
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(
                command,
                stdout=(logs / LOG_FILES[name]).open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped whole, children included
            )
        print(f"starting Airflow on {airflow_url} and MLflow on {mlflow_url}; logs: {logs}", flush=True)
        failure = wait_until_ready(processes, airflow_url, start_timeout_s)
        if failure:
            print(f"pipelines up: {failure}; see {logs / LOG_FILES['airflow']}", file=sys.stderr)
            return 1
        while not answers(mlflow_url) and processes["mlflow"].poll() is None:
            time.sleep(2)
        print(f"Airflow UI: {airflow_url}   login: admin / {admin_password(settings.airflow_home)}")
        print(f"Models:     {airflow_url}/pipelines/models")
        print(f"MLflow UI:  {mlflow_url}")
        print(f"State:      {settings.home}   logs: {logs}")
        print("DAGs start paused: unpause them in the UI; the demo's sources are kept up to the current hour.")
        print("Ctrl-C stops both.", flush=True)
        while all(p.poll() is None for p in processes.values()):
            time.sleep(2)
        stopped = [name for name, p in processes.items() if p.poll() is not None]
        print(f"{', '.join(stopped)} stopped; see {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_feed.set()
        stop_groups(processes)
