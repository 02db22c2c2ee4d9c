"""Training's time split."""

import logging
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

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


def test_cuda_without_a_usable_gpu_is_refused_naming_the_worker_and_auto_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """XGBoost asked for CUDA without a GPU trains on the CPU without a word; the pipeline does not."""
    import socket

    from pipelines.core.errors import ConfigError
    from pipelines.stages.train import choose_device, cuda_unusable

    assert choose_device("cpu") == "cpu"
    why = cuda_unusable()
    if why is None:  # a GPU machine: both ask for it and get it
        assert choose_device("cuda") == choose_device("auto") == "cuda"
        return
    with pytest.raises(ConfigError) as refused:
        choose_device("cuda")
    assert f"training.device is 'cuda', but {why} (worker {socket.gethostname()})" in str(refused.value)
    with caplog.at_level(logging.INFO, logger="pipelines.stages.train"):
        assert choose_device("auto") == "cpu"
    assert f"training.device auto: training on CPU, because {why}" in caplog.text
