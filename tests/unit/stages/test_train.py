"""Training's time split."""

from datetime import UTC, datetime, timedelta

import pandas as pd

from pipelines.core.spec import TrainingSpec
from pipelines.stages.train import logged_metrics, time_split


def test_time_split_never_trains_on_the_future() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pd.DataFrame({"t": [start + timedelta(minutes=i) for i in range(1000)]}).sample(frac=1, random_state=0)
    train, valid, holdout = time_split(frame, "t", TrainingSpec(validation_fraction=0.2, holdout_fraction=0.1))
    assert train["t"].max() < valid["t"].min() and valid["t"].max() < holdout["t"].min()
    assert len(train) + len(valid) + len(holdout) == 1000
    assert 80 <= len(holdout) <= 120 and 180 <= len(valid) <= 220


def test_each_class_recall_is_logged_under_its_own_class() -> None:
    """Recalls are logged by class name (a class absent from the split has none), by index in the
    contract's classes where MLflow refuses the name."""
    classes = ["low", "normal", "urgent?"]
    metrics = {"logloss": 0.4, "r2": None, "class_recall": {"normal": 0.5, "urgent?": 0.75}}
    logged = logged_metrics("holdout", metrics, classes)
    assert logged == {"holdout_logloss": 0.4, "holdout_recall.normal": 0.5, "holdout_recall.2": 0.75}
