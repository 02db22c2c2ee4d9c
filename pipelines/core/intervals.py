"""Partition arithmetic (UTC hours or days) shared by the sources, the lake and the DAGs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pipelines.core.errors import PermanentError

PartitionUnit = Literal["hour", "day"]
STEP: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
PANDAS_FREQ = {"hour": "h", "day": "D"}  # the same units, for Series.dt.floor


def floor_to_partition(moment: datetime, unit: PartitionUnit) -> datetime:
    """The start of the partition holding `moment` (UTC)."""
    moment = moment.astimezone(UTC)
    floored = moment.replace(minute=0, second=0, microsecond=0)
    return floored.replace(hour=0) if unit == "day" else floored


def partitions_between(start: datetime, end: datetime, unit: PartitionUnit = "hour") -> list[datetime]:
    """The partition starts in [start, end). Both ends must be timezone-aware and on partition bounds:
    an interval that cut a partition would read part of it or drop it, and neither may happen silently."""
    if start.tzinfo is None or end.tzinfo is None:
        raise PermanentError("interval bounds must be timezone-aware")
    for name, bound in (("start", start), ("end", end)):
        if bound.astimezone(UTC) != floor_to_partition(bound, unit):
            raise PermanentError(
                f"interval [{start.isoformat()}, {end.isoformat()}) does not {name} on a whole {unit}: tasks read "
                f"whole {unit}ly partitions; give the DAG a schedule that fires on them"
                + (" (minute 0)" if unit == "hour" else " (midnight UTC, '0 0 * * *')")
            )
    first = start.astimezone(UTC)
    count = int((end - first) / STEP[unit])
    return [first + STEP[unit] * i for i in range(max(count, 0))]


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    return partitions_between(start, end, "hour")


def partition_path(start: datetime, unit: PartitionUnit) -> str:
    """A partition's folder in the lake: dt=YYYY-MM-DD/hour=HH, or dt=YYYY-MM-DD for a day."""
    return f"dt={start:%Y-%m-%d}" if unit == "day" else f"dt={start:%Y-%m-%d}/hour={start:%H}"


def interval_key(start: datetime, end: datetime) -> str:
    """A file-name-safe name for an interval, used for reports and validation results."""
    return f"{start:%Y%m%dT%H%M}--{end:%Y%m%dT%H%M}"
