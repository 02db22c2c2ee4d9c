"""Hour arithmetic shared by the source layout, the lake and the DAGs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipelines.errors import PermanentError


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """The hour starts in [start, end). Both ends must be timezone-aware and on whole hours: an
    interval that cut an hour would read part of it or drop it, and neither may happen silently."""
    if start.tzinfo is None or end.tzinfo is None:
        raise PermanentError("interval bounds must be timezone-aware")
    for name, bound in (("start", start), ("end", end)):
        if bound.astimezone(UTC) != bound.astimezone(UTC).replace(minute=0, second=0, microsecond=0):
            raise PermanentError(
                f"interval [{start.isoformat()}, {end.isoformat()}) does not {name} on a whole hour: tasks read "
                "whole hourly partitions; give the DAG a schedule at minute 0"
            )
    first = start.astimezone(UTC)
    count = int((end - first).total_seconds() // 3600)
    return [first + timedelta(hours=i) for i in range(max(count, 0))]


def source_hour_file(root: Path, hour: datetime) -> Path:
    """Source feeds deliver one CSV per hour: <root>/dt=YYYY-MM-DD/hour=HH.csv."""
    return root / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}.csv"


def interval_key(start: datetime, end: datetime) -> str:
    """A file-name-safe name for an interval, used for reports and validation results."""
    return f"{start:%Y%m%dT%H%M}--{end:%Y%m%dT%H%M}"
