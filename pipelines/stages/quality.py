"""Model quality of a monitored window once its labels have arrived: the task's metrics and an
Evidently report (its Regression, BinaryClassification or MulticlassClassification data definition
with the matching preset), kept in the lake next to the drift report and in `quality_reports`.

The monitor watches the window just scored, whose labels come `label.delay_hours` later; so each
monitor run also judges the window of the same length that ended that long before, with the labels
known at the monitored window's end. A window with no labelled predictions yet is not recorded,
so a later run can still judge it; one recorded is read back, never recomputed.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, and_, select

from pipelines.core.features import parse_probabilities
from pipelines.core.intervals import floor_to_partition, interval_key
from pipelines.core.metrics import task_metrics
from pipelines.core.spec import ModelSpec
from pipelines.core.tasks import Task
from pipelines.stages.drift import seeded_sample
from pipelines.stages.labels import label_of, labels_as_known
from pipelines.storage import bulk, database, tables
from pipelines.storage.settings import Settings

log = logging.getLogger(__name__)

TARGET, PREDICTION = "target", "prediction"


@dataclass(frozen=True)
class QualitySummary:
    start: datetime
    end: datetime
    model_version: str
    rows: int
    metrics: dict[str, Any]
    report_path: str | None  # None: Evidently could not judge the window (a class absent)


def matured_window(spec: ModelSpec, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The window as long as [start, end) whose labels are due by `end`: whole partitions, delay_hours earlier."""
    matured_end = floor_to_partition(end - timedelta(hours=spec.label.delay_hours), spec.partition)
    return matured_end - (end - start), matured_end


def labelled_predictions(
    spec: ModelSpec, engine: Engine, start: datetime, end: datetime, known_at: datetime
) -> pd.DataFrame:
    """The logged predictions of [start, end) with their labels as known at `known_at`."""
    p = tables.predictions
    database.refresh_statistics(engine, p, tables.labels)
    known = labels_as_known(spec.name, known_at, start, end)
    columns = [p.c.model_version, p.c.score, p.c.predicted_class, p.c.class_probabilities, label_of(spec.task, known)]
    query = (
        select(*columns)
        .select_from(p.join(known, and_(known.c.entity_id == p.c.entity_id, known.c.as_of == p.c.as_of)))
        .where(p.c.model_name == spec.name, p.c.as_of >= start, p.c.as_of < end)
    )
    with engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).all(), columns=[c.name for c in columns])


def evidently_frame(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, Any, Any]:
    """The rows as Evidently reads them, with the task's data definition and preset."""
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression
    from evidently.presets import ClassificationPreset, RegressionPreset

    if spec.task is Task.REGRESSION:
        data = pd.DataFrame({TARGET: frame["label"].astype(float), PREDICTION: frame["score"].astype(float)})
        definition = DataDefinition(
            regression=[Regression(target=TARGET, prediction=PREDICTION)], numerical_columns=[TARGET, PREDICTION]
        )
        return data, definition, RegressionPreset()
    if spec.task is Task.BINARY:
        data = pd.DataFrame({TARGET: frame["label"].astype(int), PREDICTION: frame["score"].astype(float)})
        definition = DataDefinition(
            classification=[BinaryClassification(target=TARGET, prediction_probas=PREDICTION, pos_label=1)],
            numerical_columns=[PREDICTION],
            categorical_columns=[TARGET],
        )
        return data, definition, ClassificationPreset()
    classes = spec.label.classes or []
    probabilities = parse_probabilities(frame["class_probabilities"], classes)
    data = pd.DataFrame(probabilities, columns=classes)
    data[TARGET] = frame["label"].astype(str).to_numpy()
    data[PREDICTION] = frame["predicted_class"].astype(str).to_numpy()
    definition = DataDefinition(
        classification=[
            MulticlassClassification(target=TARGET, prediction_labels=PREDICTION, prediction_probas=classes)
        ],
        numerical_columns=classes,
        categorical_columns=[TARGET, PREDICTION],
    )
    return data, definition, ClassificationPreset()


def window_metrics(spec: ModelSpec, frame: pd.DataFrame) -> dict[str, Any]:
    labels = frame["label"].to_numpy(dtype=object if spec.task.has_classes else float)
    if spec.task.has_classes:
        classes = spec.label.classes or []
        probabilities = parse_probabilities(frame["class_probabilities"], classes)
        return task_metrics(spec.task, labels, probabilities, classes, f"{spec.name} quality, stored labels")
    return task_metrics(spec.task, labels, frame["score"].to_numpy(dtype=float))


def recorded_quality(engine: Engine, model_name: str, start: datetime, end: datetime) -> QualitySummary | None:
    q = tables.quality_reports
    with engine.connect() as connection:
        row = (
            connection.execute(
                select(q).where(q.c.model_name == model_name, q.c.interval_start == start, q.c.interval_end == end)
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    return QualitySummary(start, end, row["model_version"], row["rows"], json.loads(row["metrics"]), row["report_path"])


def unjudgeable_by_evidently(spec: ModelSpec, frame: pd.DataFrame) -> str | None:
    """Why Evidently's classification report cannot take these rows, or None. Its per-class metrics
    fail on a class the window's labels lack (and so would a per-class ROC AUC); our own metrics
    still judge such a window, leaving undefined ones empty."""
    if spec.task is Task.REGRESSION:
        return None
    expected = ["0", "1"] if spec.task is Task.BINARY else list(spec.label.classes or [])
    present = set(frame["label"].astype(int if spec.task is Task.BINARY else str).astype(str))
    absent = [c for c in expected if c not in present]
    return f"no label of class {absent} in the window" if absent else None


def evidently_report(spec: ModelSpec, settings: Settings, frame: pd.DataFrame, key: str) -> str:
    """The task's Evidently report of the rows, saved to the lake under `key`; returns its URI."""
    from evidently import Dataset, Report  # slow import: only inside the task

    data, definition, preset = evidently_frame(spec, frame)
    snapshot = Report([preset]).run(current_data=Dataset.from_pandas(data, data_definition=definition))
    with tempfile.TemporaryDirectory() as scratch:
        html = Path(scratch) / "report.html"
        snapshot.save_html(str(html))
        settings.lake.put(key, html.read_bytes())
    return settings.lake.uri_of(key)


def quality_interval(
    spec: ModelSpec, settings: Settings, engine: Engine, start: datetime, end: datetime, *, dag_run_id: str
) -> QualitySummary | None:
    """The quality of the window whose labels matured by the end of the monitored [start, end)."""
    window_start, window_end = matured_window(spec, start, end)
    recorded = recorded_quality(engine, spec.name, window_start, window_end)
    if recorded is not None:
        return recorded
    frame = labelled_predictions(spec, engine, window_start, window_end, known_at=end)
    if frame.empty:
        log.info(
            "%s: no labelled predictions in [%s, %s) yet: model quality not measured",
            spec.name, window_start.isoformat(), window_end.isoformat(),
        )  # fmt: skip
        return None
    metrics = window_metrics(spec, frame)  # on every row; the report on a seeded sample (its time grows
    sample = seeded_sample(frame, spec.drift.max_current_rows)  # faster than linearly with rows)
    unjudgeable = unjudgeable_by_evidently(spec, sample)
    report_path = None
    if unjudgeable is None:
        key = f"{spec.name}/reports/quality/{interval_key(window_start, window_end)}.html"
        report_path = evidently_report(spec, settings, sample, key)
    else:
        log.info("%s: no Evidently quality report for [%s, %s): %s", spec.name, window_start.isoformat(),
                 window_end.isoformat(), unjudgeable)  # fmt: skip
    versions = ",".join(sorted(set(frame["model_version"].astype(str))))
    summary = QualitySummary(window_start, window_end, versions, len(frame), metrics, report_path)
    bulk.upsert(
        engine,
        tables.quality_reports,
        [
            {
                "model_name": spec.name,
                "interval_start": window_start,
                "interval_end": window_end,
                "model_version": summary.model_version,
                "task": spec.task,
                "rows": summary.rows,
                "metrics": json.dumps(metrics),
                "report_path": report_path,
                "labels_as_of": end,
                "dag_run_id": dag_run_id,
                "created_at": datetime.now(UTC),
            }
        ],
        key=["model_name", "interval_start", "interval_end"],
    )
    return summary
