"""`pipelines doctor`: every alias resolves to a READY, loadable version whose source run still exists,
and agrees with the recorded history (an alias moved outside the pipeline leaves a gap in the audit);
every scored partition of the lake agrees with the prediction log, row for row count."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from pipelines.core.errors import VersionNotServableError
from pipelines.core.intervals import STEP, PartitionUnit, floor_to_partition
from pipelines.core.spec import ModelSpec
from pipelines.storage import tables
from pipelines.storage.lake import MANIFEST_FILE
from pipelines.storage.registry import ALIASES, alias_version, check_servable, recorded_alias
from pipelines.storage.settings import Settings


@dataclass
class Checkup:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_model(settings: Settings, engine: Engine, model_name: str, checkup: Checkup) -> None:
    for alias in ALIASES:
        version = alias_version(settings, model_name, alias)
        recorded = recorded_alias(engine, model_name, alias)
        if version is None:
            if recorded is not None:
                checkup.problems.append(
                    f"{model_name}@{alias}: not set, but the history last moved it to v{recorded} "
                    "(the version or the alias was deleted in MLflow)"
                )
            else:
                checkup.ok.append(f"{model_name}@{alias}: not set yet")
            continue
        try:
            servable = check_servable(settings, model_name, version)
        except VersionNotServableError as exc:
            checkup.problems.append(f"{model_name}@{alias} -> v{version}: {exc}")
            continue
        if recorded != version:
            checkup.problems.append(
                f"{model_name}@{alias} -> v{version}, but the history last moved it to "
                f"{'nothing' if recorded is None else f'v{recorded}'}: it was moved outside the pipeline; "
                f"move it with `pipelines rollback {model_name} VERSION` so the move is recorded"
            )
            continue
        checkup.ok.append(
            f"{model_name}@{alias} -> v{version}: READY, run {servable.run_id} present, booster file safe and as trained"
        )


def partition_start(key: str, unit: PartitionUnit) -> datetime:
    """The start of the partition a lake key names: .../dt=YYYY-MM-DD[/hour=HH]/_manifest.json."""
    parts = dict(p.split("=", 1) for p in key.split("/") if "=" in p)
    text = parts["dt"] + (f"T{parts['hour']}:00" if unit == "hour" else "T00:00")
    return datetime.fromisoformat(text + "+00:00")


def logged_partitions(engine: Engine, spec: ModelSpec) -> dict[datetime, int]:
    """The log's rows per partition, found partition by partition along the (model, as_of) index."""
    p = tables.predictions
    counts: dict[datetime, int] = {}
    with engine.connect() as connection:
        after = None
        while True:
            scope = p.c.model_name == spec.name
            if after is not None:
                scope &= p.c.as_of >= after
            first = connection.execute(select(func.min(p.c.as_of)).where(scope)).scalar_one()
            if first is None:
                return counts
            start = floor_to_partition(first if first.tzinfo else first.replace(tzinfo=UTC), spec.partition)
            after = start + STEP[spec.partition]
            in_partition = (p.c.model_name == spec.name) & (p.c.as_of >= start) & (p.c.as_of < after)
            counts[start] = connection.execute(select(func.count()).where(in_partition)).scalar_one()


def check_lake_and_log(settings: Settings, engine: Engine, spec: ModelSpec, checkup: Checkup) -> None:
    """Each scored partition and the log hold the same number of rows; a damaged manifest or a missing
    object is named. Each disagreement comes with the rerun that reconciles it."""
    lake: dict[datetime, int | str] = {}
    for key in settings.lake.keys(f"{spec.name}/scored/"):
        if not key.endswith(f"/{MANIFEST_FILE}"):
            continue
        start = partition_start(key, spec.partition)
        try:
            manifest = json.loads(settings.lake.get(key))
            rows = int(manifest["rows"])
            data = str(manifest.get("data") or key.replace(MANIFEST_FILE, "data.parquet"))
        except (ValueError, KeyError, TypeError) as exc:
            lake[start] = f"its manifest {settings.lake.uri_of(key)} is damaged ({exc.__class__.__name__})"
            continue
        lake[start] = rows if settings.lake.exists(data) else f"its object {settings.lake.uri_of(data)} is missing"
    log = logged_partitions(engine, spec)
    disagree = []
    for start in sorted(set(lake) | set(log)):
        in_lake, in_log = lake.get(start, 0), log.get(start, 0)
        if in_lake == in_log:
            continue
        lake_says = f"{in_lake} row(s) in the lake" if isinstance(in_lake, int) else in_lake
        end = start + STEP[spec.partition]
        disagree.append(
            f"{spec.name}: the scored {spec.partition} {start:%Y-%m-%dT%H:%MZ}: {lake_says}, {in_log} in the log; "
            f"reconcile with `pipelines run {spec.name}__score --start {start:%Y-%m-%dT%H:%MZ} --end {end:%Y-%m-%dT%H:%MZ}`"
        )
    checkup.problems.extend(disagree)
    if not disagree:
        checkup.ok.append(f"{spec.name}: {len(lake)} scored {spec.partition}(s): the lake and the log agree")


def doctor(settings: Settings, engine: Engine, specs: list[ModelSpec]) -> Checkup:
    checkup = Checkup()
    for spec in specs:
        check_model(settings, engine, spec.name, checkup)
        check_lake_and_log(settings, engine, spec, checkup)
    return checkup
