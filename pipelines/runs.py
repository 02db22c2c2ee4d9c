"""`pipelines run`: the DAG runs of one model's DAG over a range, in process, the way the demo runs them.

Each run covers one interval of the DAG's schedule (`schedules.<kind>` in the spec; the monitor
follows the score schedule, as its predictions events would). Only whole intervals inside
[start, end) are run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from pipelines.errors import PermanentError
from pipelines.spec import ModelSpec

SCHEDULED_KINDS = ("train", "score", "monitor", "backtest")


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
    cron = spec.schedules.score if kind == "monitor" else getattr(spec.schedules, kind)
    fires = croniter(cron, start.astimezone(UTC) - timedelta(microseconds=1))
    ends: list[datetime] = []
    while not ends or ends[-1] <= end:
        ends.append(fires.get_next(datetime))
    bounds = [b for b in ends if b <= end]
    return [PlannedRun(f"{spec.name}__{kind}", a, b) for a, b in pairwise(bounds)]
