"""`pipelines up` refuses a busy port before starting anything, and a start that fails stops every
process the servers started (their whole process groups), not only the two it started itself."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests import REPO_ROOT
from tests.e2e.processes import alive, descendants
from tests.e2e.test_standalone import clean_env, free_port
from tests.servers import track


def up(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "up", *args],
            env={**clean_env(home), **(env or {})},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    )


def test_a_busy_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = up(tmp_path / "home", "--airflow-port", "0", "--mlflow-port", str(port))
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    assert f"port {port} is in use: pick another with --mlflow-port" in output
    assert not (tmp_path / "home" / "airflow" / "airflow.db").exists()  # refused before doing anything


def test_a_failed_start_stops_every_process_it_started(tmp_path: Path) -> None:
    """A triggerer whose heartbeat is never recent enough keeps Airflow's health report unhealthy
    while every server runs: `up` gives up after --start-timeout and must leave nothing. (A start
    that was merely slow made this test hang forever once Airflow started in under 20 s.)"""
    never_healthy = {"AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "0"}
    process = up(
        tmp_path / "home",
        *("--airflow-port", str(free_port()), "--mlflow-port", "0", "--start-timeout", "20"),
        env=never_healthy,
    )
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        seen.update(descendants(process.pid))
        time.sleep(0.5)
    if process.poll() is None:
        process.terminate()  # `up` stops its servers on SIGTERM; the test fails either way
        process.wait(timeout=60)
        raise AssertionError(
            f"`pipelines up --start-timeout 20` still ran after 300 s: {process.stdout.read() if process.stdout else ''}"
        )
    output = process.stdout.read() if process.stdout else ""
    assert process.returncode == 1, output
    assert "Airflow was not healthy within --start-timeout 20 s" in output
    # Airflow standalone (its API server, scheduler...) and MLflow (its workers) were running.
    assert len(seen) >= 4, seen
    assert alive(set(seen), set(seen.values())) == []
