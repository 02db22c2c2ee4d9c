"""Labels arrive after the prediction (the spec's delay), and may be corrected later.

Every delivery of a label is kept with its `arrived_at`: the label of a key as known at time T is
the latest delivery that arrived before T, whatever order the files were ingested in. So a
backtest as of T gives the same answer forever, and a correction counts from its arrival on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, Subquery, and_, func, select

from pipelines.core.errors import BadDataError, RecordConflictError
from pipelines.core.spec import ModelSpec
from pipelines.core.tasks import Task
from pipelines.storage import bulk, tables
from pipelines.storage.sources import SourceAccess, read_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelIngestResult:
    files_read: int  # reads that returned rows: files, or one per SQL query
    rows: int
    missing_partitions: list[str]


def check_labels(spec: ModelSpec, frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Type a label delivery; a missing column, an empty key or time, or a label that does not fit the
    task (0/1, a finite number, one of label.classes) names `where`."""
    frame = frame.reset_index(drop=True)
    required = [spec.entity_key, spec.timestamp, spec.label.column, spec.label.arrived_at_column]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise BadDataError(f"{where}: label data lacks column(s) {missing}")
    frame[spec.entity_key] = frame[spec.entity_key].astype("string")
    for column in (spec.entity_key, spec.timestamp, spec.label.arrived_at_column):
        if frame[column].isna().any():
            rows = [int(i) + 2 for i in frame.index[frame[column].isna()][:5]]  # +2: header, 1-based lines
            raise BadDataError(f"{where}: column '{column}' is empty on line(s) {rows}; every label needs it")
    for column in (spec.timestamp, spec.label.arrived_at_column):
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            times = pd.to_datetime(values, utc=True)
        else:
            times = pd.to_datetime(values.astype("string"), utc=True, format="ISO8601", errors="coerce")
        if times.isna().any():
            rows = [int(i) + 2 for i in frame.index[times.isna()][:5]]
            raise BadDataError(f"{where}: column '{column}' is not an ISO 8601 time on line(s) {rows}")
        frame[column] = times
    frame[spec.label.column] = typed_labels(spec, frame[spec.label.column], where)
    frame["_file"] = where
    return frame


def typed_labels(spec: ModelSpec, values: pd.Series, where: str) -> pd.Series:
    """Binary: 0 or 1; regression: a finite number; multiclass: one of label.classes (kept as its name)."""
    column = spec.label.column
    if spec.task.has_classes:
        classes = spec.label.classes or []
        names = values.astype("string").str.strip()
        bad = names.isna() | ~names.isin(classes)
        expected = f"one of label.classes {classes}"
        typed = names
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        if spec.task is Task.BINARY:
            bad, expected = numbers.isna() | ~numbers.isin([0, 1]), "0 or 1"
        else:
            bad, expected = numbers.isna() | ~np.isfinite(numbers.astype("float64")), "a finite number"
        typed = numbers.astype("float64")
    if bad.any():
        lines = [int(i) + 2 for i in values.index[bad.to_numpy()][:5]]  # +2: header, 1-based lines
        found = values[bad.to_numpy()].head(5).astype(object).where(values.notna(), "<missing>").tolist()
        raise BadDataError(
            f"{where}: column '{column}' must be {expected} for task {spec.task}, found {found} on line(s) {lines}"
        )
    return typed


def ingest_labels(
    spec: ModelSpec, access: SourceAccess, engine: Engine, start: datetime, end: datetime
) -> LabelIngestResult:
    """Upsert labels that arrived in [start, end). Re-running the same interval changes nothing."""
    arrived = spec.label.arrived_at_column
    reads = read_source(spec.source.labels, access, arrived, start, end, spec.partition)
    missing = [m for r in reads for m in r.read.missing]
    if missing:
        # Label feeds are sparse by nature (no events that hour, a late upstream); not an error.
        log.warning("%s: no label file for %d partition(s): %s", spec.name, len(missing), ", ".join(missing[:5]))
    frames = []
    for read in reads:
        if not len(read.read.frame.columns):
            continue
        frame = check_labels(spec, read.read.frame, str(read.read.origin["uri"]))
        frames.append(frame[(frame[arrived] >= start) & (frame[arrived] < end)])  # each arrival read once
    frames = [f for f in frames if len(f)]
    if not frames:
        return LabelIngestResult(0, 0, missing)
    frame = pd.concat(frames, ignore_index=True)
    multiclass = spec.task.has_classes
    rows = pd.DataFrame(
        {
            "model_name": spec.name,
            "entity_id": frame[spec.entity_key].astype("string"),
            "as_of": frame[spec.timestamp],
            # A class is kept by name (label_class): its index depends on the spec's class order.
            "label": None if multiclass else frame[spec.label.column].astype("float64"),
            "label_class": frame[spec.label.column].astype("string") if multiclass else None,
            "arrived_at": frame[spec.label.arrived_at_column],
        }
    )
    delivery = ["entity_id", "as_of", "arrived_at"]
    rows = rows.drop_duplicates()  # the same delivery in two files is one delivery
    clashing = rows.duplicated(delivery, keep=False)
    if clashing.any():
        sample = frame.loc[clashing[clashing].index, [spec.entity_key, spec.timestamp, spec.label.column, "_file"]]
        raise BadDataError(
            f"{spec.name}: {int(clashing.sum())} label rows give different labels for the same key and arrival "
            f"time; which one holds is ambiguous, e.g. {sample.head(4).to_dict('records')}"
        )
    # Every delivery is kept; a re-delivered file adds nothing, and one that changes a recorded delivery fails.
    try:
        bulk.merge_frame(
            engine,
            tables.labels,
            rows,
            key=["model_name", "entity_id", "as_of", "arrived_at"],
            refuse_changed=["label", "label_class"],
        )
    except RecordConflictError as exc:
        keys = {(str(s["entity_id"]), pd.Timestamp(s["as_of"]).tz_localize(None)) for s in exc.samples}
        at_fault = frame[
            [
                (str(e), pd.Timestamp(t).tz_localize(None)) in keys
                for e, t in zip(frame[spec.entity_key], frame[spec.timestamp], strict=True)
            ]
        ]
        files = sorted(set(at_fault["_file"]))
        raise RecordConflictError(f"{exc}; the new label(s) come from {files}", exc.samples) from exc
    return LabelIngestResult(len(frames), len(rows), missing)


def labels_as_known(model_name: str, known_at: datetime, as_of_from: datetime, as_of_to: datetime) -> Subquery:
    """Per key with as_of in [as_of_from, as_of_to): the latest delivery that arrived before `known_at`."""
    t = tables.labels
    latest = (
        select(t.c.entity_id, t.c.as_of, func.max(t.c.arrived_at).label("arrived_at"))
        .where(
            t.c.model_name == model_name,
            t.c.as_of >= as_of_from,
            t.c.as_of < as_of_to,
            t.c.arrived_at < known_at,
        )
        .group_by(t.c.as_of, t.c.entity_id)  # the key's order: the as_of range is read, grouped, in one pass
        .subquery()
    )
    return (
        select(t.c.entity_id, t.c.as_of, t.c.label, t.c.label_class, t.c.arrived_at)
        .join(
            latest,
            and_(
                t.c.model_name == model_name,
                t.c.entity_id == latest.c.entity_id,
                t.c.as_of == latest.c.as_of,
                t.c.arrived_at == latest.c.arrived_at,
            ),
        )
        .subquery("known_labels")
    )


def label_of(task: Task, known: Subquery) -> Any:
    """The known label's column for the task: a class name (multiclass) or a number."""
    return (known.c.label_class if task.has_classes else known.c.label).label("label")


def labels_known_at(
    engine: Engine, spec: ModelSpec, as_of_from: datetime, as_of_to: datetime, known_at: datetime
) -> pd.DataFrame:
    """Labels for events in [as_of_from, as_of_to) as known at `known_at` (no look-ahead)."""
    known = labels_as_known(spec.name, known_at, as_of_from, as_of_to)
    with engine.connect() as connection:
        frame = pd.DataFrame(
            connection.execute(select(known.c.entity_id, known.c.as_of, label_of(spec.task, known))).all(),
            columns=["entity_id", "as_of", "label"],
        )
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    return frame
