"""Backtest metrics per cohort, version and slice."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.core.spec import load_spec
from pipelines.core.tasks import Task
from pipelines.stages.backtest import cohort_metrics, with_probability_columns
from tests import REPO_ROOT

CHURN = load_spec(REPO_ROOT / "dags" / "models" / "demo_churn.yaml")
SALES = load_spec(REPO_ROOT / "dags" / "models" / "demo_sales.yaml")
END = datetime(2026, 1, 10, tzinfo=UTC)  # labels of the test cohorts are all due by then


def test_cohort_metrics_per_day_and_version() -> None:
    rng = np.random.default_rng(0)
    day = pd.Timestamp("2026-01-03", tz="UTC")
    labels = rng.integers(0, 2, 400)
    frame = pd.DataFrame(
        {
            "as_of": [day + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 48, 400)],
            "model_version": rng.choice(["1", "2"], 400),
            "score": np.clip(labels * 0.6 + rng.random(400) * 0.4, 0, 1),
            "label": labels,
            "plan": rng.choice(["basic", "pro", None], 400),
        }
    )
    rows = cohort_metrics(CHURN, frame, ["plan"], "logged", END)
    whole = [r for r in rows if r["slice_column"] == "ALL"]
    assert {(r["cohort"], r["model_version"]) for r in whole} == {
        ("2026-01-03", "1"),
        ("2026-01-03", "2"),
        ("2026-01-04", "1"),
        ("2026-01-04", "2"),
    }
    assert sum(r["n"] for r in whole) == 400 and {r["scored_by"] for r in rows} == {"logged"}
    assert all(r["auc"] > 0.9 for r in whole)
    by_plan = [r for r in rows if r["slice_column"] == "plan"]
    assert {r["slice_value"] for r in by_plan} == {"basic", "pro"}  # a missing value is in no slice
    assert sum(r["n"] for r in by_plan) == int(frame["plan"].notna().sum())


def test_regression_cohorts_have_regression_metrics_equal_to_sklearn() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    labels = rng.gamma(2.0, 50.0, 300)
    frame = pd.DataFrame(
        {
            "as_of": pd.Timestamp("2026-01-03", tz="UTC"),
            "model_version": "1",
            "score": labels + rng.normal(3, 10, 300),
            "label": labels,
        }
    )
    (row,) = cohort_metrics(SALES, frame, [], "logged", END)
    assert row["rmse"] == pytest.approx(np.sqrt(mean_squared_error(labels, frame["score"])))
    assert row["mae"] == pytest.approx(mean_absolute_error(labels, frame["score"]))
    assert row["r2"] == pytest.approx(r2_score(labels, frame["score"]))
    assert row["mean_error"] == pytest.approx((frame["score"] - labels).mean())
    assert row["mean_error"] > 0 and row["mean_label"] == pytest.approx(labels.mean())
    assert "auc" not in row and "positives" not in row


def test_multiclass_cohorts_read_the_logged_probabilities() -> None:
    from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score

    from pipelines.core.features import probabilities_json

    classes = ["low", "mid", "high"]
    spec = CHURN.model_copy(
        update={"task": Task.MULTICLASS, "label": CHURN.label.model_copy(update={"classes": classes})}
    )
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, 500)
    logits = np.eye(3)[truth] * 1.5 + rng.normal(0, 1, (500, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(
        {
            "as_of": pd.Timestamp("2026-01-03", tz="UTC"),
            "model_version": "1",
            "score": probabilities.max(axis=1),
            "label": np.array(classes)[truth],
            "class_probabilities": probabilities_json(probabilities, classes),
        }
    )
    (row,) = cohort_metrics(spec, with_probability_columns(spec, frame), [], "logged", END)
    predicted = probabilities.argmax(axis=1)
    assert row["logloss"] == pytest.approx(log_loss(truth, probabilities), rel=1e-12)
    assert row["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert row["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    recall = recall_score(truth, predicted, average=None)
    assert json.loads(row["class_recall"]) == pytest.approx(dict(zip(classes, recall, strict=True)))


def test_a_stored_label_of_a_class_the_spec_dropped_is_named() -> None:
    """The spec's classes changed after labels were stored: the backtest says which label, not a KeyError."""
    from pipelines.core.errors import ContractError
    from pipelines.core.features import probabilities_json

    classes = ["low", "high"]
    spec = CHURN.model_copy(
        update={"task": Task.MULTICLASS, "label": CHURN.label.model_copy(update={"classes": classes})}
    )
    probabilities = np.array([[0.7, 0.3], [0.2, 0.8]])
    frame = pd.DataFrame(
        {
            "as_of": pd.Timestamp("2026-01-03", tz="UTC"),
            "model_version": "1",
            "score": probabilities.max(axis=1),
            "label": ["low", "mid"],
            "class_probabilities": probabilities_json(probabilities, classes),
        }
    )
    with pytest.raises(ContractError, match=r"demo_churn backtest, stored labels: label\(s\) \['mid'\] are not among"):
        cohort_metrics(spec, with_probability_columns(spec, frame), [], "logged", END)


def test_a_cohort_counts_all_its_predictions_and_says_whether_its_labels_are_all_due() -> None:
    """n counts the labelled predictions, `predictions` all of the day's (a slice's too); a day is
    complete once its last hour is past the label delay (demo_churn: 6 h), and a day without any
    known label gets no row."""
    day = pd.Timestamp("2026-01-03", tz="UTC")
    hours = [day + pd.Timedelta(hours=h) for h in range(48)]  # two days, one prediction an hour
    frame = pd.DataFrame(
        {
            "as_of": hours,
            "model_version": "1",
            "score": [0.2, 0.8] * 24,
            # The first day's labels are all in but two; the second day has none yet.
            "label": [np.nan, np.nan, *([0.0, 1.0] * 11), *([np.nan] * 24)],
            "plan": ["basic", "pro"] * 24,
        }
    )
    due = day.to_pydatetime() + timedelta(days=1, hours=6)
    for end, complete in ((due - timedelta(minutes=1), False), (due, True)):
        rows = cohort_metrics(CHURN, frame, ["plan"], "logged", end)
        assert {r["cohort"] for r in rows} == {"2026-01-03"}
        (whole,) = [r for r in rows if r["slice_column"] == "ALL"]
        assert (whole["n"], whole["predictions"], whole["complete"]) == (22, 24, complete)
        assert whole["auc"] == 1.0 and whole["positives"] == 11
        by_plan = {r["slice_value"]: (r["n"], r["predictions"]) for r in rows if r["slice_column"] == "plan"}
        assert by_plan == {"basic": (11, 12), "pro": (11, 12)}
    replayed = cohort_metrics(CHURN, frame[frame["label"].notna()], [], "replay", due)
    assert [(r["n"], r["predictions"]) for r in replayed] == [(22, None)]
