"""The task and metric tables: every task's metrics, gate metrics, objectives and floor come from them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.core.spec import GateSpec
from pipelines.core.tasks import METRICS, Task, higher_is_better
from pipelines.stages.gate import HIGHER_IS_BETTER
from pipelines.storage import tables


def test_each_task_reads_its_metrics_from_the_one_table() -> None:
    assert Task.BINARY.metrics == ("auc", "logloss", "brier")
    assert Task.REGRESSION.metrics == ("rmse", "mae", "r2", "mean_error")
    assert Task.MULTICLASS.metrics == ("logloss", "accuracy", "macro_f1")
    assert Task.BINARY.gate_metrics == ("auc", "logloss", "brier", "rmse")  # the first is the default
    assert Task.REGRESSION.gate_metrics == ("rmse", "mae", "r2")
    assert Task.MULTICLASS.gate_metrics == ("logloss", "accuracy", "macro_f1")
    assert [t.baseline for t in Task] == ["base_rate", "class_priors", "mean"]
    assert [t.has_classes for t in Task] == [False, True, False]
    assert Task("regression").objectives[0] == "reg:squarederror" and Task.BINARY == "binary"


def test_a_metric_has_one_direction_and_one_backtest_column() -> None:
    assert HIGHER_IS_BETTER == {"auc": True, "logloss": False, "brier": False, "rmse": False, "mae": False,
                                "r2": True, "accuracy": True, "macro_f1": True}  # fmt: skip
    with pytest.raises(ValueError, match="mean_error"):
        higher_is_better("mean_error")  # a bias has no better direction: no gate judges by it
    assert set(METRICS) <= set(tables.backtest_metrics.c.keys())


@pytest.mark.parametrize(("metric", "accepted"), [("macro_f1", True), ("mean_error", False), ("f1", False)])
def test_the_gate_takes_only_metrics_a_gate_judges_by(metric: str, accepted: bool) -> None:
    if accepted:
        assert GateSpec(metric=metric).metric == metric
        return
    with pytest.raises(ValidationError, match=f"'{metric}' is no metric a gate judges by; use one of"):
        GateSpec(metric=metric)
