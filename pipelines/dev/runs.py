"""`pipelines run`: the DAG runs of one model's DAG over a range, in process, the way the demo runs them.

Each run covers one interval of the DAG's schedule (`schedules.<kind>` in the spec; the monitor
follows the score schedule, as its predictions events would). Only whole intervals inside
[start, end) are run.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from pipelines.core.dag_kinds import DAG_KINDS, SCHEDULED_KINDS
from pipelines.core.errors import PermanentError, RunInProgressError
from pipelines.core.intervals import interval_key
from pipelines.core.spec import ModelSpec


@contextmanager
def interval_lock(home: Path, dag_id: str, start: datetime, end: datetime) -> Iterator[None]:
    """One `pipelines run` of a DAG's interval at a time in a home: a second is told the first is
    running, rather than both failing inside Airflow ("Task Instance not found"). The lock is the
    kernel's (flock): it goes with its process, so a killed run never leaves it behind."""
    folder = home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dag_id}__{interval_key(start, end)}.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunInProgressError(
                f"{dag_id} for [{start.isoformat()}, {end.isoformat()}) is already being run by another "
                f"`pipelines run` (pid {holder}); wait for it to finish, then run again if it failed"
            ) from None
        try:
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class PlannedRun:
    dag_id: str
    start: datetime
    end: datetime

    @property
    def conf(self) -> dict[str, str] | None:
        """The monitor runs on predictions events; run by hand, it takes its interval as params."""
        if self.dag_id.endswith("__monitor"):
            return {"interval_start": self.start.isoformat(), "interval_end": self.end.isoformat()}
        return None


def planned_runs(spec: ModelSpec, kind: str, start: datetime, end: datetime) -> list[PlannedRun]:
    """The schedule's intervals that lie inside [start, end), oldest first."""
    from croniter import croniter

    if kind not in SCHEDULED_KINDS:
        raise PermanentError(f"{spec.name}__{kind} has no schedule to run over a range; use one of {SCHEDULED_KINDS}")
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise PermanentError(f"the range [{start}, {end}) must be non-empty, with time zones (e.g. 2026-01-03T00:00Z)")
    cron = getattr(spec.schedules, str(DAG_KINDS[kind].schedule))
    fires = croniter(cron, start.astimezone(UTC) - timedelta(microseconds=1))
    ends: list[datetime] = []
    while not ends or ends[-1] <= end:
        ends.append(fires.get_next(datetime))
    bounds = [b for b in ends if b <= end]
    return [PlannedRun(f"{spec.name}__{kind}", a, b) for a, b in pairwise(bounds)]
