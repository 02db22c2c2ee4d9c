"""Model quality of a labelled window, on both backends: the task's metrics equal scikit-learn's, an
Evidently report is kept in the lake, a window Evidently cannot judge (a class absent from its
labels) still gets its metrics, and a re-run reads the recorded result back."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from pipelines.core.features import probabilities_json
from pipelines.core.intervals import interval_key
from pipelines.core.spec import ModelSpec, load_spec
from pipelines.core.tasks import Task
from pipelines.stages.quality import matured_window, quality_interval
from pipelines.storage import bulk, tables
from pipelines.storage.lake import open_lake
from pipelines.storage.settings import Settings, get_settings
from tests import REPO_ROOT

SALES = load_spec(REPO_ROOT / "dags" / "models" / "demo_sales.yaml")  # a daily regression, labels 30 h late
CHURN = load_spec(REPO_ROOT / "dags" / "models" / "demo_churn.yaml")
CLASSES = ["low", "normal", "urgent"]
TICKETS = SALES.model_copy(
    update={"name": "tickets", "task": Task.MULTICLASS, "label": SALES.label.model_copy(update={"classes": CLASSES})}
)
MONITORED = (datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(get_settings(), lake=open_lake(str(tmp_path / "lake")))


def log_window(engine: Engine, spec: ModelSpec, labels: list[object], outputs: np.ndarray) -> pd.DataFrame:
    """Predictions and labels of the window the monitor of MONITORED judges; returns what was logged."""
    start, _ = matured_window(spec, *MONITORED)
    rows = len(labels)
    logged = pd.DataFrame(
        {
            "model_name": spec.name,
            "entity_id": [f"e{i}" for i in range(rows)],
            "as_of": [start + timedelta(minutes=i) for i in range(rows)],
            "model_version": "1",
            "features_sha256": "0" * 64,
            "dag_run_id": "scheduled__test",
            "scored_at": MONITORED[0],
            "unseen_categories": 0,
            "label": labels,
        }
    )
    if spec.task == "multiclass":
        top = outputs.argmax(axis=1)
        logged["score"] = outputs.max(axis=1)
        logged["predicted_class"] = np.array(CLASSES)[top]
        logged["class_probabilities"] = probabilities_json(outputs, CLASSES)
    else:
        logged["score"] = outputs
    label_rows = logged[["model_name", "entity_id", "as_of"]].assign(arrived_at=MONITORED[0])
    label_rows["label_class" if spec.task == "multiclass" else "label"] = labels
    bulk.upsert(
        engine,
        tables.predictions,
        logged.drop(columns=["label"]).to_dict("records"),
        ["model_name", "entity_id", "as_of"],
    )
    bulk.upsert(
        engine, tables.labels, label_rows.to_dict("records"), ["model_name", "entity_id", "as_of", "arrived_at"]
    )
    return logged


def judged(spec: ModelSpec, settings: Settings, engine: Engine) -> tuple[dict, str | None]:
    summary = quality_interval(spec, settings, engine, *MONITORED, dag_run_id="scheduled__monitor")
    assert summary is not None and (summary.start, summary.end) == matured_window(spec, *MONITORED)
    return summary.metrics, summary.report_path


def test_a_multiclass_window_gets_sklearn_metrics_and_a_report_once(settings: Settings, engine: Engine) -> None:
    from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score

    rng = np.random.default_rng(0)
    labels = list(rng.choice(CLASSES, 120))
    probabilities = rng.dirichlet([1, 1, 1], 120)
    log_window(engine, TICKETS, labels, probabilities)

    metrics, path = judged(TICKETS, settings, engine)
    truth = [CLASSES.index(c) for c in labels]
    predicted = probabilities.argmax(axis=1)
    assert metrics["logloss"] == pytest.approx(log_loss(truth, probabilities, labels=[0, 1, 2]), rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert metrics["class_recall"] == pytest.approx(
        dict(zip(CLASSES, recall_score(truth, predicted, average=None), strict=True))
    )
    assert path is not None and path.endswith(".html")
    html = Path(path.removeprefix("file://")).read_text()
    assert "<!DOCTYPE html>" in html[:200] or "<!doctype html>" in html[:200].lower()

    # A re-run of the monitor reads the recorded window back: same result, no second row.
    assert judged(TICKETS, settings, engine) == (metrics, path)
    with engine.connect() as db:
        count = select(func.count()).where(tables.quality_reports.c.model_name == TICKETS.name)
        assert db.execute(count).scalar() == 1


def test_a_window_lacking_a_class_is_judged_without_an_evidently_report(settings: Settings, engine: Engine) -> None:
    """Evidently's classification preset fails on a class absent from the labels; the metrics do not."""
    rng = np.random.default_rng(1)
    labels = list(rng.choice(["low", "urgent"], 80))
    spec = TICKETS.model_copy(update={"name": "tickets_two_classes"})  # the PostgreSQL tables are the module's
    log_window(engine, spec, labels, rng.dirichlet([1, 1, 1], 80))
    metrics, path = judged(spec, settings, engine)
    assert path is None and set(metrics["class_recall"]) == {"low", "urgent"}
    with engine.connect() as db:
        q = tables.quality_reports
        row = db.execute(select(q).where(q.c.model_name == spec.name)).mappings().one()
    assert row["report_path"] is None and json.loads(row["metrics"]) == metrics


def test_a_binary_window_of_one_class_has_no_auc(settings: Settings, engine: Engine) -> None:
    log_window(engine, CHURN, [0] * 40, np.linspace(0.05, 0.6, 40))
    metrics, path = judged(CHURN, settings, engine)
    assert path is None and metrics["auc"] is None and metrics["logloss"] > 0


def test_a_regression_window_gets_its_report_even_with_a_constant_label(settings: Settings, engine: Engine) -> None:
    from sklearn.metrics import mean_absolute_error

    values = np.linspace(10.0, 30.0, 50)
    log_window(engine, SALES, [20.0] * 50, values)
    metrics, path = judged(SALES, settings, engine)
    assert metrics["r2"] is None and metrics["mae"] == pytest.approx(mean_absolute_error([20.0] * 50, values))
    assert metrics["mean_error"] == pytest.approx(0.0, abs=1e-9)
    key = f"{SALES.name}/reports/quality/{interval_key(*matured_window(SALES, *MONITORED))}.html"
    assert path == settings.lake.uri_of(key) and settings.lake.exists(key)
