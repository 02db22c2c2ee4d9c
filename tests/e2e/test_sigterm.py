"""SIGTERM to pytest (a CI timeout, a closed terminal) leaves no server a test started behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import REPO_ROOT
from tests.e2e.processes import alive


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["in-process", "xdist-worker"])
def test_sigterm_to_pytest_stops_every_server_a_test_started(tmp_path: Path, workers: list[str]) -> None:
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *workers, "tests/e2e/stopped_session.py"],
        cwd=REPO_ROOT,
        env={**os.environ, "STOPPED_SESSION_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < 4 and time.monotonic() < deadline and session.poll() is None:
            time.sleep(0.2)
            if (tmp_path / "pids").exists():
                pids = {int(p) for p in (tmp_path / "pids").read_text().split()}
        assert len(pids) == 4, f"the servers did not start: {pids}"
        assert alive(pids, set()) != []

        session.send_signal(signal.SIGTERM)  # to pytest alone, as a CI runner's timeout sends it
        output, _ = session.communicate(timeout=120)
    finally:
        if session.poll() is None:
            os.killpg(session.pid, signal.SIGKILL)
    assert "pytest stopped by signal SIGTERM" in output, output[-3000:]
    assert session.returncode != 0
    assert alive(pids, pids) == []  # the servers, their groups, and the workers that left them
    assert (tmp_path / "torn_down").exists(), output[-3000:]  # pytest then tore its fixtures down
