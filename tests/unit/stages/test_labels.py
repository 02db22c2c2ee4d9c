"""Label history on both backends: every delivery is kept; the label as known at T is the latest
delivery that arrived before T, whatever order the files are ingested in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pandas as pd
import pytest
from sqlalchemy import Engine

from pipelines.core import errors
from pipelines.core.errors import BadDataError
from pipelines.core.spec import ModelSpec, load_spec
from pipelines.core.tasks import Task
from pipelines.dev.demo_data import source_hour_file
from pipelines.stages.labels import ingest_labels, labels_known_at
from pipelines.storage import tables
from pipelines.storage.sources import SourceAccess
from tests import REPO_ROOT

EVENT = datetime(2026, 1, 3, 2, 15, tzinfo=UTC)
FIRST = datetime(2026, 1, 3, 8, tzinfo=UTC)  # the original delivery's hour
LATER = datetime(2026, 1, 4, 9, tzinfo=UTC)  # the correction's hour


def spec_named(name: str) -> ModelSpec:
    return load_spec(REPO_ROOT / "dags" / "models" / "demo_churn.yaml").model_copy(update={"name": name})


def write_labels(root: Path, spec: ModelSpec, hour: datetime, labels: dict[str, int]) -> Path:
    path = source_hour_file(root / "demo_churn" / "labels", hour)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "customer_id": list(labels),
            "event_time": EVENT.isoformat(),
            "churned": list(labels.values()),
            "arrived_at": (hour + timedelta(minutes=10)).isoformat(),
        }
    ).to_csv(path, index=False)
    return path


def known(engine: Engine, spec: ModelSpec, at: datetime) -> dict[str, float]:
    frame = labels_known_at(engine, spec, EVENT - timedelta(hours=1), EVENT + timedelta(hours=1), at)
    return dict(zip(frame["entity_id"], frame["label"], strict=True))


@pytest.mark.parametrize("order", ["original first", "correction first"])
def test_a_correction_counts_from_its_arrival_and_survives_a_reingest(
    engine: Engine, tmp_path: Path, order: str
) -> None:
    spec = spec_named(f"m_{uuid4().hex[:8]}")
    write_labels(tmp_path, spec, FIRST, {"C000001": 1, "C000002": 0})
    write_labels(tmp_path, spec, LATER, {"C000001": 0})  # C000001 was not a churner after all
    days = [(FIRST, FIRST + timedelta(hours=1)), (LATER, LATER + timedelta(hours=1))]
    for start, end in days if order == "original first" else days[::-1]:
        ingest_labels(spec, SourceAccess(tmp_path), engine, start, end)
    ingest_labels(spec, SourceAccess(tmp_path), engine, *days[0])  # the original file read again (a re-run, a training)

    assert tables.count_rows(engine, tables.labels, spec.name) == 3  # both deliveries of C000001, kept
    assert known(engine, spec, FIRST) == {}  # nothing had arrived yet
    assert known(engine, spec, LATER) == {"C000001": 1.0, "C000002": 0.0}  # as known before the correction
    assert known(engine, spec, LATER + timedelta(hours=1)) == {"C000001": 0.0, "C000002": 0.0}


def test_a_file_that_changes_a_recorded_delivery_is_refused(engine: Engine, tmp_path: Path) -> None:
    spec = spec_named(f"m_{uuid4().hex[:8]}")
    write_labels(tmp_path, spec, FIRST, {"C000001": 1})
    ingest_labels(spec, SourceAccess(tmp_path), engine, FIRST, FIRST + timedelta(hours=1))
    path = write_labels(tmp_path, spec, FIRST, {"C000001": 0})  # the same delivery, rewritten in place
    with pytest.raises(
        errors.RecordConflictError,
        match=rf"labels: rows already recorded .*'label': 1.0.*'new_label': 0.0.*come from \['{path}'\]",
    ):
        ingest_labels(spec, SourceAccess(tmp_path), engine, FIRST, FIRST + timedelta(hours=1))
    assert known(engine, spec, LATER) == {"C000001": 1.0}


def test_two_labels_for_one_delivery_are_ambiguous(engine: Engine, tmp_path: Path) -> None:
    spec = spec_named(f"m_{uuid4().hex[:8]}")
    path = write_labels(tmp_path, spec, FIRST, {"C000001": 1})
    frame = pd.read_csv(path)
    pd.concat([frame, frame.assign(churned=0)]).to_csv(path, index=False)
    with pytest.raises(BadDataError, match=rf"2 label rows give different labels .*{path}"):
        ingest_labels(spec, SourceAccess(tmp_path), engine, FIRST, FIRST + timedelta(hours=1))
    assert tables.count_rows(engine, tables.labels, spec.name) == 0


def test_a_label_without_its_arrival_time_names_file_and_line(engine: Engine, tmp_path: Path) -> None:
    spec = spec_named(f"m_{uuid4().hex[:8]}")
    path = write_labels(tmp_path, spec, FIRST, {"C000001": 1, "C000002": 0})
    frame = pd.read_csv(path)
    frame.loc[1, "arrived_at"] = None
    frame.to_csv(path, index=False)
    with pytest.raises(BadDataError, match=rf"{path}: column 'arrived_at' is empty on line\(s\) \[3\]"):
        ingest_labels(spec, SourceAccess(tmp_path), engine, FIRST, FIRST + timedelta(hours=1))
    assert tables.count_rows(engine, tables.labels, spec.name) == 0


def labels_of_task(tmp_path: Path, task: str, values: list[str]) -> tuple[ModelSpec, Path]:
    """A model of `task` (multiclass: classes stay, leave) and its label file for FIRST with these labels."""
    spec = spec_named(f"m_{uuid4().hex[:8]}")
    label = spec.label.model_copy(update={"classes": ["stay", "leave"] if task == "multiclass" else None})
    spec = spec.model_copy(update={"task": Task(task), "label": label})
    path = write_labels(tmp_path, spec, FIRST, {"C000001": 1, "C000002": 0})
    frame = pd.read_csv(path, dtype=str)
    frame["churned"] = values
    frame.to_csv(path, index=False)
    return spec, path


@pytest.mark.parametrize(
    ("task", "values", "message"),
    [
        ("binary", ["1", "2"], r"must be 0 or 1 for task binary, found \['2'\] on line\(s\) \[3\]"),
        ("regression", ["12.5", "many"], r"must be a finite number for task regression, found \['many'\] on line"),
        ("regression", ["12.5", ""], r"must be a finite number for task regression, found \['<missing>'\] on line"),
        ("multiclass", ["stay", "gone"], r"must be one of label.classes \['stay', 'leave'\] .*found \['gone'\]"),
    ],
)
def test_a_label_that_does_not_fit_the_task_names_file_line_and_value(
    engine: Engine, tmp_path: Path, task: str, values: list[str], message: str
) -> None:
    spec, path = labels_of_task(tmp_path, task, values)
    with pytest.raises(BadDataError, match=rf"{path}: column 'churned' {message}"):
        ingest_labels(spec, SourceAccess(tmp_path), engine, FIRST, FIRST + timedelta(hours=1))
    assert tables.count_rows(engine, tables.labels, spec.name) == 0


def test_regression_values_and_class_names_are_kept_as_delivered(engine: Engine, tmp_path: Path) -> None:
    for task, values, expected in (
        ("regression", ["12.5", "0"], {"C000001": 12.5, "C000002": 0.0}),
        ("multiclass", ["leave", "stay"], {"C000001": "leave", "C000002": "stay"}),
    ):
        spec, _ = labels_of_task(tmp_path, task, values)
        ingest_labels(spec, SourceAccess(tmp_path), engine, FIRST, FIRST + timedelta(hours=1))
        ingest_labels(spec, SourceAccess(tmp_path), engine, FIRST, FIRST + timedelta(hours=1))  # a re-run adds nothing
        assert tables.count_rows(engine, tables.labels, spec.name) == 2
        assert known(engine, spec, LATER) == expected
