"""Every server a test starts is stopped, even when pytest itself is stopped by a signal.

A fixture's finalizer never runs when pytest is killed by SIGTERM (a CI timeout, a closed terminal):
the Airflow, MLflow and Celery processes it started would live on. Each server a test starts is
tracked here (it runs in a process group of its own). SIGTERM or SIGHUP to pytest stops every
tracked group and whatever left it, passes the signal on to pytest's own children (the xdist
workers, which do the same for their servers) and waits until what they started has stopped, then
interrupts pytest, which tears its fixtures down as on Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import subprocess
from typing import Any, TypeVar

from pipelines.dev.up import stop_groups

Process = TypeVar("Process", bound="subprocess.Popen[Any]")

WORKERS_GRACE_S = 90  # an xdist worker stopping its own servers, each given pipelines.dev.up's grace

_tracked: dict[str, subprocess.Popen[Any]] = {}
_stopping = False


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


def _stop_children(signum: int) -> None:
    """Pass the signal on to this process's children (xdist workers; a CLI a test runs) and wait
    until what they started has stopped. Not for the workers themselves: an xdist worker exits only
    when the controller closes its channel, after this handler returns."""
    import psutil

    me = psutil.Process()
    children = me.children()
    started_by_them = [p for p in me.children(recursive=True) if p not in children]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(signum)
    _, lingering = psutil.wait_procs(started_by_them, timeout=WORKERS_GRACE_S)
    for process in lingering:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _on_signal(signum: int, frame: object) -> None:
    global _stopping
    if _stopping:  # a second signal (the group's, then the controller's) must not cut the first stop short
        return
    _stopping = True
    stop_tracked()
    _stop_children(signum)
    raise KeyboardInterrupt(f"pytest stopped by signal {signal.Signals(signum).name}")


def install() -> None:
    """Called once per pytest process (the controller and each xdist worker) before any test runs."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    atexit.register(stop_tracked)
