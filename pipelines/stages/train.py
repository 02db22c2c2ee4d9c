"""Stage 3: train XGBoost on a time window, one MLflow run per training."""

from __future__ import annotations

import json
import logging
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from pipelines.core.errors import ConfigError, NotEnoughDataError, SpecError
from pipelines.core.features import CONTRACT_ATTRIBUTE, build_contract, predict, prepare_features, training_target
from pipelines.core.intervals import partitions_between
from pipelines.core.metrics import task_metrics
from pipelines.core.spec import ModelSpec, TrainingSpec, check_objective
from pipelines.core.tasks import Task
from pipelines.stages.labels import labels_known_at
from pipelines.storage.lake import Lake, read_partitions
from pipelines.storage.registry import BASELINE_TAG, MODEL_SHA256_TAG
from pipelines.storage.settings import Settings
from pipelines.storage.tracking import experiment_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    model_uri: str
    device: str
    best_iteration: int
    metrics: dict[str, float]
    rows: dict[str, int]
    lineage: dict[str, str]  # the tags of the run, carried onto the registered version


def assemble_training_set(spec: ModelSpec, lake: Lake, engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Events of the window's ingested partitions joined with the labels known at `end`.

    Events whose labels have not arrived by `end` are left out: using them would need the future.
    """
    events = read_partitions(lake, spec.name, "raw", partitions_between(start, end, spec.partition), spec.partition)
    labels = labels_known_at(engine, spec, start, end, known_at=end)
    joined = events.merge(
        labels.rename(columns={"entity_id": spec.entity_key, "as_of": spec.timestamp, "label": spec.label.column}),
        on=[spec.entity_key, spec.timestamp],
        how="inner",
        validate="one_to_one",
    )
    return joined.sort_values(spec.timestamp, kind="stable").reset_index(drop=True)


def time_split(frame: pd.DataFrame, timestamp: str, training: TrainingSpec) -> tuple[pd.DataFrame, ...]:
    """Train, validation (early stopping) and holdout (the gate), in time order: no leakage from the future."""
    times = frame[timestamp]
    holdout_from = times.quantile(1 - training.holdout_fraction)
    valid_from = times.quantile(1 - training.holdout_fraction - training.validation_fraction)
    train = frame[times < valid_from]
    valid = frame[(times >= valid_from) & (times < holdout_from)]
    holdout = frame[times >= holdout_from]
    return train, valid, holdout


def cuda_unusable() -> str | None:
    """Why XGBoost cannot train on a GPU here, or None when a one-round probe really ran on one."""
    import xgboost as xgb

    if not xgb.build_info().get("USE_CUDA"):
        return f"this worker's xgboost {xgb.__version__} is built without CUDA"
    probe_x = np.arange(20, dtype=np.float32).reshape(10, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            booster = xgb.train(
                {"device": "cuda", "tree_method": "hist"}, xgb.DMatrix(probe_x, label=np.arange(10) % 2), 1
            )
        except xgb.core.XGBoostError as exc:
            return f"XGBoost cannot use a GPU on this worker: {str(exc).splitlines()[0]}"
    # Without a visible GPU XGBoost silently falls back to CPU; its config says where it really ran.
    config = json.loads(booster.save_config())
    if not config["learner"]["generic_param"].get("device", "cpu").startswith("cuda"):
        return "no GPU is visible to this worker (XGBoost fell back to CPU)"
    return None


def choose_device(requested: str) -> str:
    """'auto' picks CUDA only when a one-round probe really ran on a GPU, else CPU, saying why.
    'cuda' asked for where no GPU is usable fails at once, naming the worker: XGBoost would
    otherwise train on the CPU without a word, and the run would look like a GPU run."""
    if requested == "cpu":
        return "cpu"
    why = cuda_unusable()
    if why is None:
        return "cuda"
    if requested == "auto":
        log.info("training.device auto: training on CPU, because %s", why)
        return "cpu"
    raise ConfigError(
        f"training.device is '{requested}', but {why} (worker {socket.gethostname()}); send the train "
        "task to a GPU worker (training.queue), or set training.device to auto or cpu"
    )


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def logged_metrics(prefix: str, metrics: dict[str, Any], classes: list[str] | None) -> dict[str, float]:
    """MLflow metrics of one split: defined values only; each class's recall as <prefix>_recall.<class>,
    or by its index in the contract's classes where MLflow refuses the name (a class name may hold any character)."""
    from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

    flat = {f"{prefix}_{name}": value for name, value in metrics.items() if isinstance(value, float)}
    for name, value in (metrics.get("class_recall") or {}).items():
        key = f"{prefix}_recall.{name}"
        if not validate_param_and_metric_name(key) or path_not_unique(key):
            key = f"{prefix}_recall.{(classes or []).index(name)}"
        flat[key] = value
    return flat


DATASET_SAMPLE_ROWS = 1000  # rows of the training frame logged as the run's MLflow dataset
DATASET_DIGEST_CHARS = 36  # MLflow keeps at most this much of a dataset digest


def training_baseline(task: Task, labels: pd.Series) -> dict[str, Any]:
    """The task's trivial model from the training split: the positive rate, the class priors by name, or the mean."""
    if task.has_classes:
        priors = labels.astype("string").value_counts(normalize=True)
        return {task.baseline: {str(k): float(v) for k, v in priors.items()}}
    return {task.baseline: float(pd.to_numeric(labels).astype("float64").mean())}


def train_model(
    spec: ModelSpec,
    frame: pd.DataFrame,
    settings: Settings,
    tags: dict[str, str],
    overrides: dict[str, Any] | None = None,
) -> TrainingResult:
    """One MLflow run: params, lineage tags, the dataset, metrics, holdout and drift reference, the model.

    `overrides` (from the train DAG's params) replace spec values for this run only:
    `xgboost_params` (merged over training.params), `num_boost_round`.
    """
    import mlflow
    import xgboost as xgb
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    overrides = overrides or {}
    label = spec.label.column
    num_boost_round = int(overrides.get("num_boost_round") or spec.training.num_boost_round)
    early_stopping = spec.training.early_stopping_rounds
    train, valid, holdout = time_split(frame, spec.timestamp, spec.training)
    sizes = {"train": len(train), "valid": len(valid), "holdout": len(holdout)}
    if len(frame) < spec.training.min_rows or min(sizes.values()) == 0:
        raise NotEnoughDataError(
            f"{spec.name}: {len(frame)} labelled rows in the training window {sizes}, "
            f"need at least training.min_rows={spec.training.min_rows}; ingest more intervals or labels"
        )
    for name, part in (("train", train), ("valid", valid)):
        if part[label].nunique() < 2:
            kind = "value" if spec.task is Task.REGRESSION else "class"
            raise NotEnoughDataError(f"{spec.name}: the {name} split has a single {kind}; widen the training window")

    contract = build_contract(spec, train)
    device = choose_device(spec.training.device)
    extra = dict(overrides.get("xgboost_params") or {})
    try:
        check_objective(spec.task, extra, "param xgboost_params")
    except ValueError as exc:
        raise SpecError(f"{spec.name}: {exc}") from exc
    params: dict[str, Any] = {
        "tree_method": "hist",
        "seed": 0,
        "objective": spec.objective,
        **spec.training.params,
        **extra,
        "device": device,
    }
    if spec.task.has_classes:
        params["num_class"] = len(contract.classes or [])
    # Before the run opens: a label the task cannot learn fails here, naming it, and leaves no run behind.
    target = {name: training_target(part[label], contract, f"{spec.name} {name} split") for name, part in
              (("train", train), ("valid", valid), ("holdout", holdout))}  # fmt: skip
    lineage = {
        **{k: v for k, v in tags.items() if k != "run_name"},
        "task": spec.task,
        "device": device,
        "xgboost_version": xgb.__version__,
        # Rows from here on were never fitted or early-stopped on: the gate compares models there.
        "trained_until": holdout[spec.timestamp].min().isoformat(),
        # What a model that learned nothing would say: the gate's floor (gate.beat_base_rate).
        BASELINE_TAG: json.dumps(training_baseline(spec.task, train[label])),
        **{f"rows_{k}": str(v) for k, v in sizes.items()},
    }

    # The run opens before training, so a training killed midway leaves a RUNNING run (never a
    # registered version); the next try of the same DAG run marks it KILLED and starts over.
    with mlflow.start_run(experiment_id=experiment_id(settings, spec.name), run_name=tags.get("run_name")) as run:
        mlflow.set_tags(lineage)
        mlflow.log_params({**params, "num_boost_round": num_boost_round, "early_stopping_rounds": early_stopping})
        # A seeded sample stands for the dataset: MLflow would hash and profile the whole frame (15 s
        # at 1M rows). The digest is the snapshot's own, the one `data_sha256` names in full.
        mlflow.log_input(
            from_pandas(
                frame.sample(n=min(len(frame), DATASET_SAMPLE_ROWS), random_state=0),
                source=tags["data_uri"],
                name=f"{spec.name}-training-sample",
                targets=label,
                digest=tags["data_sha256"][:DATASET_DIGEST_CHARS],
            ),
            context="training",
        )
        started = time.perf_counter()
        dtrain = xgb.QuantileDMatrix(prepare_features(train, contract), label=target["train"], enable_categorical=True)
        dvalid = xgb.QuantileDMatrix(
            prepare_features(valid, contract), label=target["valid"], ref=dtrain, enable_categorical=True
        )
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=num_boost_round,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=early_stopping,
            verbose_eval=False,
        )
        best_iteration = int(booster.best_iteration)
        # Keep only the trees up to the best round, so every scorer predicts what we evaluated.
        booster = booster[: best_iteration + 1]
        booster.set_attr(**{CONTRACT_ATTRIBUTE: contract.to_json()})
        train_seconds = time.perf_counter() - started

        metrics = {"train_seconds": train_seconds, "best_iteration": float(best_iteration)}
        for name, part in (("valid", valid), ("holdout", holdout)):
            values = task_metrics(spec.task, part[label].to_numpy(), predict(booster, contract, part), contract.classes)
            metrics.update(logged_metrics(name, values, contract.classes))
        mlflow.log_metrics(metrics)

        raw_inputs = train[contract.columns]
        signature = infer_signature(raw_inputs.head(100), predict(booster, contract, train.head(100)))
        with tempfile.TemporaryDirectory() as scratch:
            reference = train.sample(n=min(spec.drift.reference_rows, len(train)), random_state=0)
            # With its timestamps: the monitor calibrates drift thresholds on the reference's own days.
            stamp = (
                [spec.timestamp]
                if spec.timestamp in reference.columns and spec.timestamp not in contract.columns
                else []
            )
            kept = [*contract.columns, *stamp]
            reference[kept].to_parquet(Path(scratch) / "reference.parquet", index=False)
            holdout.to_parquet(Path(scratch) / "holdout.parquet", index=False)
            mlflow.log_artifact(str(Path(scratch) / "reference.parquet"), artifact_path="reference")
            mlflow.log_artifact(str(Path(scratch) / "holdout.parquet"), artifact_path="holdout")
        # MLflow checks the input example through the generic pyfunc wrapper, which cannot apply our
        # categorical contract and logs a misleading warning; we only serve through the xgboost flavor.
        with _quiet_logger("mlflow.models.model"):
            model_info = mlflow.xgboost.log_model(
                booster,
                name="model",
                signature=signature,
                input_example=raw_inputs.head(5),
                model_format="json",
                # Explicit requirements: inference takes ~6 s, and we know exactly what serves this model.
                pip_requirements=[f"xgboost=={xgb.__version__}", f"pandas=={pd.__version__}"],
            )
        # Scorers refuse a file whose sha256 is not this one (pipelines.storage.registry.load_model).
        lineage[MODEL_SHA256_TAG] = logged_file_sha256(model_info.model_id, "model.json")
        mlflow.set_tag(MODEL_SHA256_TAG, lineage[MODEL_SHA256_TAG])
        # Set last: a run with this tag holds a complete model, which a re-run of the DAG run reuses.
        mlflow.set_tag("model_uri", model_info.model_uri)
    log.info(
        "%s: trained on %s in %.1fs, best iteration %d, holdout %s",
        spec.name,
        device,
        train_seconds,
        best_iteration,
        {k: round(v, 4) for k, v in metrics.items() if k.startswith("holdout_")},
    )
    return TrainingResult(run.info.run_id, model_info.model_uri, device, best_iteration, metrics, sizes, lineage)


def logged_file_sha256(model_id: str, file_name: str) -> str:
    """The sha256 of a file of a logged model, as stored in the artifact store (what scorers will read)."""
    import hashlib

    import mlflow

    location = mlflow.get_logged_model(model_id).artifact_location
    with tempfile.TemporaryDirectory() as scratch:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{file_name}", dst_path=scratch)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def previous_training(settings: Settings, spec: ModelSpec, dag_id: str, dag_run_id: str) -> TrainingResult | None:
    """The complete training of an earlier try of this DAG run, if any; unfinished ones are marked KILLED.

    Re-running a train DAG run (a retry, a cleared task) must not train and register a second model.
    """
    import mlflow
    from mlflow import MlflowClient

    experiment = experiment_id(settings, spec.name)  # also points MLflow at our store, before the client
    client = MlflowClient()
    runs = mlflow.search_runs(
        experiment_ids=[experiment],
        filter_string=f"tags.dag_id = '{dag_id}' and tags.dag_run_id = '{dag_run_id}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    for run in runs:
        if run.info.status == "RUNNING":
            log.warning("%s: marking run %s of an interrupted earlier try KILLED", spec.name, run.info.run_id)
            client.set_terminated(run.info.run_id, status="KILLED")
    for run in runs:
        tags = run.data.tags
        if run.info.status == "FINISHED" and tags.get("model_uri"):
            log.info(
                "%s: reusing run %s, trained by an earlier try of DAG run %s", spec.name, run.info.run_id, dag_run_id
            )
            metrics = dict(run.data.metrics)
            rows = {k.removeprefix("rows_"): int(v) for k, v in tags.items() if k.startswith("rows_")}
            lineage = {k: v for k, v in tags.items() if not k.startswith("mlflow.") and k != "model_uri"}
            return TrainingResult(
                run.info.run_id,
                tags["model_uri"],
                tags["device"],
                int(metrics["best_iteration"]),
                metrics,
                rows,
                lineage,
            )
    return None
