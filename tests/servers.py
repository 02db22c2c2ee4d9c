"""Every server a test starts is stopped, even when pytest itself is stopped by a signal.

A fixture's finalizer never runs when pytest is killed by SIGTERM (a CI timeout, a closed terminal):
the Airflow, MLflow and Celery processes it started would live on. Each server a test starts is
tracked here (it runs in a process group of its own); SIGTERM or SIGHUP to pytest stops every tracked
group and whatever left it, then interrupts pytest, which tears its fixtures down as on Ctrl-C.
"""

from __future__ import annotations

import atexit
import signal
import subprocess
from typing import Any, TypeVar

from pipelines.up import stop_groups

Process = TypeVar("Process", bound="subprocess.Popen[Any]")

_tracked: dict[str, subprocess.Popen[Any]] = {}


def track(process: Process) -> Process:
    """Stop this process's group (it was started with start_new_session) if pytest is stopped."""
    _tracked[str(process.pid)] = process
    return process


def stop_tracked() -> None:
    """Stop every tracked server still running: its group, then what left the group, then SIGKILL."""
    running = {pid: p for pid, p in _tracked.items() if p.poll() is None}
    _tracked.clear()
    if running:
        stop_groups(running)


def _on_signal(signum: int, frame: object) -> None:
    stop_tracked()
    raise KeyboardInterrupt(f"pytest stopped by signal {signal.Signals(signum).name}")


def install() -> None:
    """Called once per pytest process, before any test starts a server."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    atexit.register(stop_tracked)
