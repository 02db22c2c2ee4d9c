"""The kinds of model and the metrics that judge them: one table each, read everywhere else.

A task says which XGBoost objectives fit it, which metrics its training, backtest and status show
(headline first), which of those its gate may judge by (the first is the default), and what its
trivial model (the floor every promotion must beat) predicts. Adding a metric is one `Metric` entry
here, its computation in pipelines/core/metrics.py (and its per-row loss in pipelines/stages/gate.py
when a gate may judge by it), and a migration adding its backtest_metrics column.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Task(StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"

    @property
    def objectives(self) -> tuple[str, ...]:
        """The XGBoost objectives whose output this task's scoring, metrics and gate understand (a binary
        probability, one probability per class, or a value on the label's scale); the first is the default."""
        return OBJECTIVES[self]

    @property
    def metrics(self) -> tuple[str, ...]:
        """What training logs, the backtest stores per cohort x version x slice and status shows; headline first."""
        return tuple(m.name for m in METRICS.values() if self in m.stored_for)

    @property
    def gate_metrics(self) -> tuple[str, ...]:
        """The metrics this task's gate can judge by; the first is the default."""
        return tuple(m.name for m in METRICS.values() if self in m.gate_for)

    @property
    def has_classes(self) -> bool:
        """Labels are class names (label.classes), predictions one probability per class."""
        return self is Task.MULTICLASS

    @property
    def baseline(self) -> str:
        """What the trivial model predicts, as the `training_baseline` tag names it."""
        return {Task.BINARY: "base_rate", Task.MULTICLASS: "class_priors", Task.REGRESSION: "mean"}[self]


OBJECTIVES: dict[Task, tuple[str, ...]] = {
    Task.BINARY: ("binary:logistic",),
    Task.MULTICLASS: ("multi:softprob",),
    Task.REGRESSION: (
        "reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "reg:squaredlogerror",
        "reg:gamma", "reg:tweedie", "count:poisson",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Metric:
    name: str  # also its column in backtest_metrics
    higher_is_better: bool | None  # None: a signed diagnostic (a bias), never a gate's
    stored_for: frozenset[Task]  # the tasks whose training, backtest and status compute it
    gate_for: frozenset[Task] = frozenset()  # the tasks whose gate may judge by it
    meaning: str = ""


BINARY, MULTICLASS, REGRESSION = Task.BINARY, Task.MULTICLASS, Task.REGRESSION
# In display order: a task's metrics and gate metrics keep this order, so each task's headline is first.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("auc", True, frozenset({BINARY}), frozenset({BINARY}), "ranking of positives above negatives"),
        Metric("logloss", False, frozenset({BINARY, MULTICLASS}), frozenset({BINARY, MULTICLASS}), "log loss"),
        Metric("brier", False, frozenset({BINARY}), frozenset({BINARY}), "mean squared error of the probability"),
        Metric("rmse", False, frozenset({REGRESSION}), frozenset({BINARY, REGRESSION}), "root mean squared error"),
        Metric("mae", False, frozenset({REGRESSION}), frozenset({REGRESSION}), "mean absolute error"),
        Metric("r2", True, frozenset({REGRESSION}), frozenset({REGRESSION}), "coefficient of determination"),
        Metric("mean_error", None, frozenset({REGRESSION}), meaning="bias: mean of prediction - label"),
        Metric("accuracy", True, frozenset({MULTICLASS}), frozenset({MULTICLASS}), "share of rows whose top class is right"),
        Metric("macro_f1", True, frozenset({MULTICLASS}), frozenset({MULTICLASS}), "F1 averaged over classes"),
    )
}  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """The direction a gate metric improves in."""
    direction = METRICS[metric].higher_is_better
    if direction is None:
        raise ValueError(f"metric '{metric}' has no better direction: no gate judges by it")
    return direction
