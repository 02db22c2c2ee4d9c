"""Run only by test_sigterm.py, as a pytest session of its own that gets SIGTERM mid-test (its name
keeps the suite's collection away from it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import track

# A server that starts a worker which leaves its process group (as Airflow's task runners do), then
# both wait; the server writes both pids.
SERVER = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()} {worker.pid}\\n")
time.sleep(600)
"""


@pytest.fixture
def servers() -> Iterator[Path]:
    out = Path(os.environ["STOPPED_SESSION_DIR"])
    for _ in range(2):
        track(subprocess.Popen([sys.executable, "-c", SERVER, str(out / "pids")], start_new_session=True))
    yield out
    (out / "torn_down").write_text("the fixture's finalizer ran")


def test_waits_for_its_signal(servers: Path) -> None:
    time.sleep(600)
