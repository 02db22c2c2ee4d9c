"""The prediction log: what served, per entity and time, in the `predictions` table (append-only;
a replaced row is kept whole in `predictions_history`) and the scored inputs kept in the lake, which
the backtest, the drift monitor and the quality report read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import ColumnElement, Engine, select

from pipelines.core.errors import (
    BadDataError,
    PartitionError,
    PermanentError,
)
from pipelines.core.intervals import STEP, partitions_between
from pipelines.core.spec import ModelSpec
from pipelines.storage import bulk, tables
from pipelines.storage.lake import (
    MANIFEST_FILE,
    Partition,
    partition_key,
    read_partition,
)
from pipelines.storage.settings import Settings

LOGGED_COLUMNS = ("model_version", "score", "features_sha256", "unseen_categories")


MULTICLASS_COLUMNS = ("predicted_class", "class_probabilities")  # logged beside the score by a multiclass model


# The columns of a prediction's row in the log (multiclass adds MULTICLASS_COLUMNS), as prediction_rows makes them.
LOG_COLUMNS = ("model_name", "entity_id", "as_of", "model_version", "score", "features_sha256", "dag_run_id",
               "scored_at", "unseen_categories")  # fmt: skip


def prediction_rows(spec: ModelSpec, scored: pd.DataFrame, dag_run_id: str, scored_at: datetime) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model_name": spec.name,
            "entity_id": scored[spec.entity_key].astype("string"),
            "as_of": scored[spec.timestamp],
            "model_version": scored["model_version"],
            "score": scored["score"].astype("float64"),
            "features_sha256": scored["features_sha256"],
            "dag_run_id": dag_run_id,
            "scored_at": scored_at,
            "unseen_categories": scored["unseen_categories"].astype("int64"),
            **{c: scored[c].astype("string") for c in MULTICLASS_COLUMNS if c in scored.columns},
        }
    )


def partition_scope(spec: ModelSpec, part: datetime) -> ColumnElement[bool]:
    p = tables.predictions
    return (p.c.model_name == spec.name) & (p.c.as_of >= part) & (p.c.as_of < part + STEP[spec.partition])


def write_predictions(engine: Engine, spec: ModelSpec, part: datetime, rows: pd.DataFrame, dag_run_id: str) -> int:
    """The partition's predictions replace its rows, in one transaction; returns rows removed.

    Every row updated or removed is first copied to predictions_history.
    """
    return bulk.merge_frame(
        engine,
        tables.predictions,
        rows,
        key=["model_name", "as_of", "entity_id"],
        update_when_changed=[*LOGGED_COLUMNS, *(MULTICLASS_COLUMNS if spec.task.has_classes else ())],
        replaces=partition_scope(spec, part),
        history=(tables.predictions_history, {"superseded_at": datetime.now(UTC), "superseded_by_run": dag_run_id}),
    )


@dataclass(frozen=True)
class ServedPartition:
    version: str
    scores: pd.DataFrame  # what was logged: the lake's scored partition, else the log's own rows
    partition: Partition | None  # the scored partition, when the lake still has it intact
    damaged: str | None = None  # why the lake's scored partition could not be used, when it is damaged


def served_partition(spec: ModelSpec, settings: Settings, engine: Engine, part: datetime) -> ServedPartition | None:
    """What served this partition, read once (None for one never scored). The lake's scored partition
    says so; where it is lost or damaged (its manifest or its object), the log does."""
    key = partition_key(spec.name, "scored", part, spec.partition)
    damaged = None
    if settings.lake.exists(f"{key}/{MANIFEST_FILE}"):
        try:
            frame, partition = read_partition(settings.lake, key)
            return ServedPartition(str(partition.manifest["model_version"]), frame, partition)
        except PartitionError as exc:
            damaged = str(exc)
    logged = logged_predictions(spec, engine, part)  # the lake lost it (moved, expired, damaged): the log says
    versions = sorted(set(logged["model_version"]))
    if len(versions) > 1:
        raise BadDataError(
            f"{spec.name}: the {spec.partition} {part.isoformat()} is logged under several versions {versions}"
        )
    return ServedPartition(versions[0], logged, None, damaged) if versions else None


def rewritten_rows(spec: ModelSpec, before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Logged predictions that `after` would change or drop (new keys are additions, not rewrites)."""
    key = [spec.entity_key, spec.timestamp]
    watched = ["model_version", "score", "features_sha256"]
    types = {spec.entity_key: "string", spec.timestamp: "datetime64[ns, UTC]"}
    before, after = (f[[*key, *watched]].astype(types) for f in (before, after))
    joined = before.merge(after, on=key, how="left", suffixes=("", "_new"))
    changed = joined["score_new"].isna() | (
        joined[watched].to_numpy() != joined[[f"{c}_new" for c in watched]].to_numpy()
    ).any(axis=1)
    return joined.loc[changed, [*key, "model_version", "score", "score_new"]]


def logged_predictions(spec: ModelSpec, engine: Engine, part: datetime) -> pd.DataFrame:
    """The partition's rows of the prediction log, under the scored frame's column names."""
    p = tables.predictions
    query = select(p.c.entity_id, p.c.as_of, p.c.model_version, p.c.score, p.c.features_sha256).where(
        p.c.model_name == spec.name, p.c.as_of >= part, p.c.as_of < part + STEP[spec.partition]
    )
    with engine.connect() as connection:
        frame = pd.DataFrame(
            connection.execute(query).all(),
            columns=[spec.entity_key, spec.timestamp, "model_version", "score", "features_sha256"],
        )
    frame[spec.timestamp] = pd.to_datetime(frame[spec.timestamp], utc=True)
    return frame


def read_scored(spec: ModelSpec, settings: Settings, start: datetime, end: datetime) -> tuple[pd.DataFrame, list[str]]:
    """The scored rows of [start, end), and the versions that scored its partitions (an empty one names one too)."""
    parts = [
        read_partition(settings.lake, partition_key(spec.name, "scored", p, spec.partition))
        for p in partitions_between(start, end, spec.partition)
    ]
    if not parts:
        raise PermanentError(f"{spec.name}: no partitions to read in [{start.isoformat()}, {end.isoformat()})")
    versions = sorted({str(partition.manifest["model_version"]) for _, partition in parts})
    return pd.concat([frame for frame, _ in parts], ignore_index=True), versions


@dataclass(frozen=True)
class LoggedInputs:
    frame: pd.DataFrame  # the scored partitions found, concatenated: inputs, score, model_version
    partitions_found: int
    partitions_missing: list[str]  # partitions never scored: none in the lake's `scored` zone


def read_logged_inputs(spec: ModelSpec, settings: Settings, parts: list[datetime]) -> LoggedInputs:
    """What the serving model saw and said in these partitions, as kept in the lake."""
    frames, missing = [], []
    for part in parts:
        key = partition_key(spec.name, "scored", part, spec.partition)
        if not settings.lake.exists(f"{key}/{MANIFEST_FILE}"):
            missing.append(part.isoformat())
            continue
        frames.append(read_partition(settings.lake, key)[0])
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return LoggedInputs(frame, len(frames), missing)
