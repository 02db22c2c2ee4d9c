"""Labels arrive after the prediction (the spec's delay). They are upserted into the labels table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, select

from pipelines import tables
from pipelines.intervals import hours_between, source_hour_file
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelIngestResult:
    files_read: int
    rows: int
    missing_hours: list[str]


def read_label_file(spec: ModelSpec, path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={spec.entity_key: "string"})
    required = [spec.entity_key, spec.timestamp, spec.label.column, spec.label.arrived_at_column]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: label file lacks column(s) {missing}")
    for column in (spec.timestamp, spec.label.arrived_at_column):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    labels = pd.to_numeric(frame[spec.label.column], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        bad = frame.loc[labels.isna() | ~labels.isin([0, 1]), spec.label.column].head(5).tolist()
        raise ValueError(f"{path}: column '{spec.label.column}' must be 0 or 1, found e.g. {bad}")
    frame[spec.label.column] = labels
    return frame.dropna(subset=[spec.entity_key])


def ingest_labels(
    spec: ModelSpec, source_root: Path, engine: Engine, start: datetime, end: datetime
) -> LabelIngestResult:
    """Upsert labels that arrived in [start, end). Re-running the same interval changes nothing."""
    root = source_root / spec.source.labels_path
    frames, missing = [], []
    for hour in hours_between(start, end):
        path = source_hour_file(root, hour)
        if path.exists():
            frames.append(read_label_file(spec, path))
        else:
            missing.append(hour.isoformat())
    if missing:
        # Label feeds are sparse by nature (no events that hour, a late upstream); not an error.
        log.warning("%s: no label file for %d hour(s): %s", spec.name, len(missing), ", ".join(missing[:5]))
    if not frames:
        return LabelIngestResult(0, 0, missing)
    frame = pd.concat(frames, ignore_index=True)
    rows = pd.DataFrame(
        {
            "model_name": spec.name,
            "entity_id": frame[spec.entity_key].astype("string"),
            "as_of": frame[spec.timestamp],
            "label": frame[spec.label.column].astype("float64"),
            "arrived_at": frame[spec.label.arrived_at_column],
        }
    )
    # The latest delivery of a key wins within a batch (a corrected label comes later).
    rows = rows.sort_values("arrived_at", kind="stable").drop_duplicates(["entity_id", "as_of"], keep="last")
    # A label is known from its first arrival: a re-delivered file neither moves arrived_at nor rewrites it.
    tables.merge_frame(
        engine, tables.labels, rows, key=["model_name", "entity_id", "as_of"], update_when_changed=["label"]
    )
    return LabelIngestResult(len(frames), len(rows), missing)


def labels_known_at(
    engine: Engine, model_name: str, as_of_from: datetime, as_of_to: datetime, known_at: datetime
) -> pd.DataFrame:
    """Labels for events in [as_of_from, as_of_to) that had arrived before `known_at` (no look-ahead)."""
    t = tables.labels
    query = select(t.c.entity_id, t.c.as_of, t.c.label).where(
        t.c.model_name == model_name,
        t.c.as_of >= as_of_from,
        t.c.as_of < as_of_to,
        t.c.arrived_at < known_at,
    )
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).all(), columns=["entity_id", "as_of", "label"])
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    return frame
