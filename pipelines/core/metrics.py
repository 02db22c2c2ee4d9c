"""Each task's metrics on labelled rows, computed by scikit-learn: what training logs, the backtest
stores per cohort x version x slice, and status shows.

Predictions are a probability (binary), a value (regression), or a matrix of class probabilities
in the order of `classes` (multiclass, whose labels are class names).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.core.features import class_index
from pipelines.core.tasks import Task

# Each task's metrics, headline first (pipelines/core/tasks.py: METRICS); backtest_metrics has a column for each.
TASK_METRICS: dict[Task, tuple[str, ...]] = {task: task.metrics for task in Task}


def task_metrics(
    task: Task, labels: np.ndarray, predictions: np.ndarray, classes: list[str] | None = None, where: str = "labels"
) -> dict[str, Any]:
    """The task's metrics; None where one is undefined (AUC of a single class, R2 of a constant label).
    Multiclass adds `class_recall`: the recall of each class present among the labels; a label of a class
    not in `classes` (one the spec dropped since) is an error naming `where`."""
    if task is Task.BINARY:
        return binary_metrics(labels, predictions)
    if task is Task.REGRESSION:
        return regression_metrics(labels, predictions)
    return multiclass_metrics(labels, predictions, classes or [], where)


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    labels = np.asarray(labels, dtype="float64")
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)  # a hard 0 or 1 would make the log loss infinite
    return {
        "auc": float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else None,
        "logloss": float(log_loss(labels, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, scores)),
    }


def regression_metrics(labels: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    labels = np.asarray(labels, dtype="float64")
    constant = len(labels) < 2 or np.all(labels == labels[0])
    return {
        "rmse": float(np.sqrt(mean_squared_error(labels, values))),
        "mae": float(mean_absolute_error(labels, values)),
        "r2": None if constant else float(r2_score(labels, values)),
        "mean_error": float(np.mean(values - labels)),  # bias: positive when the model over-predicts
    }


def multiclass_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], where: str = "labels"
) -> dict[str, Any]:
    import pandas as pd
    from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score

    truth = class_index(pd.Series(labels), classes, where)
    predicted = probabilities.argmax(axis=1)
    present = sorted(set(truth.tolist()))
    recall = recall_score(truth, predicted, labels=present, average=None, zero_division=0)
    return {
        "logloss": float(log_loss(truth, probabilities, labels=list(range(len(classes))))),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "class_recall": {classes[k]: float(r) for k, r in zip(present, recall, strict=True)},
    }
