"""The one preprocessing step shared by training and serving.

The contract (feature order, numeric columns, the categories seen in training) is stored inside
the model file as a booster attribute, so a scorer cannot apply different preprocessing than the
trainer did. Categories unseen in training become missing values, which XGBoost routes by its
learned default direction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.distinct import distinct_codes
from pipelines.core.errors import ContractError
from pipelines.core.spec import ModelSpec
from pipelines.core.tasks import Task

CONTRACT_ATTRIBUTE = "pipelines_contract"


@dataclass(frozen=True)
class FeatureContract:
    numeric: list[str]
    categorical: dict[str, list[str]]
    # What the model predicts: a binary probability, a value (regression), or one probability per
    # class of `classes`, in that order (multiclass); a label's class is its index there.
    task: Task = Task.BINARY
    classes: list[str] | None = None

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_json(self) -> str:
        # No sort_keys: the order of the columns is part of the contract.
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, payload: str) -> FeatureContract:
        data = json.loads(payload)
        classes = data.get("classes")
        return cls(
            numeric=list(data["numeric"]),
            categorical={k: list(v) for k, v in data["categorical"].items()},
            task=Task(str(data.get("task", Task.BINARY))),  # models from before tasks were binary
            classes=None if classes is None else [str(c) for c in classes],
        )


def build_contract(spec: ModelSpec, training_frame: pd.DataFrame) -> FeatureContract:
    missing = [column for column in spec.features.all if column not in training_frame.columns]
    if missing:
        raise ContractError(
            f"{spec.name}: the training data lacks feature column(s) {missing} that the spec's features list; "
            "add them to the source, or remove them from the spec"
        )
    categories = {
        column: sorted(str(v) for v in training_frame[column].dropna().unique()) for column in spec.features.categorical
    }
    classes = None if spec.label.classes is None else list(spec.label.classes)
    return FeatureContract(list(spec.features.numeric), categories, spec.task, classes)


def class_index(labels: pd.Series, classes: list[str], where: str) -> np.ndarray:
    """Multiclass labels (class names) as the model's class indices; a name not in `classes` names `where`."""
    names = labels.astype("string")
    index = pd.Categorical(names, categories=classes).codes
    unknown = names[(index < 0) | names.isna().to_numpy()]
    if len(unknown):
        raise ContractError(
            f"{where}: label(s) {sorted(set(unknown.fillna('<missing>')))[:5]} are not among the classes {classes}"
        )
    return np.asarray(index, dtype="int64")


def training_target(frame: pd.Series, contract: FeatureContract, where: str) -> np.ndarray:
    """The label as XGBoost learns it: 0/1, a value, or the class index."""
    if contract.task.has_classes:
        return class_index(frame, contract.classes or [], where)
    return np.asarray(frame.to_numpy(dtype="float64"))


def prepare_features(frame: pd.DataFrame, contract: FeatureContract) -> pd.DataFrame:
    """Select and type the model's inputs, in the contract's order."""
    missing = [column for column in contract.columns if column not in frame.columns]
    if missing:
        raise ContractError(f"input is missing feature column(s) {missing} required by the model")
    prepared = pd.DataFrame(index=frame.index)
    for column in contract.numeric:
        if not (pd.api.types.is_numeric_dtype(frame[column]) or frame[column].isna().all()):
            raise ContractError(f"feature column '{column}' must be numeric, got dtype {frame[column].dtype}")
        prepared[column] = frame[column].astype("float64")
    for column, categories in contract.categorical.items():
        prepared[column] = as_categories(frame[column], categories)
    return prepared


def as_categories(values: pd.Series, categories: list[str]) -> pd.Categorical:
    """The column's values, as text, coded by the training categories: missing and unseen values are
    missing. Each distinct value is looked up once."""
    codes, distinct = distinct_codes(values)
    positions = np.append(pd.Index(categories).get_indexer(distinct.astype("string").astype(object)), -1)
    return pd.Categorical.from_codes(positions[codes], categories=categories)


def unseen_categories(frame: pd.DataFrame, contract: FeatureContract) -> pd.DataFrame:
    """Per row and categorical column: a non-null value the model never saw in training."""
    return pd.DataFrame(
        {
            column: frame[column].notna() & ~frame[column].astype("string").isin(categories)
            for column, categories in contract.categorical.items()
        },
        index=frame.index,
    )


def unseen_category_counts(frame: pd.DataFrame, contract: FeatureContract) -> dict[str, int]:
    """Per categorical column, how many non-null values the model never saw in training."""
    return {column: int(count) for column, count in unseen_categories(frame, contract).sum().items()}


def predict(booster: Any, contract: FeatureContract, frame: pd.DataFrame) -> np.ndarray:
    # inplace_predict: the same trees and scores as through a DMatrix, without building one.
    raw = np.asarray(booster.inplace_predict(prepare_features(frame, contract)), dtype="float64")
    if not contract.task.has_classes or not contract.classes:
        return raw
    # One row of class probabilities per input row, in the contract's class order. XGBoost's float32
    # softmax misses a sum of 1 by ~1e-7 (scikit-learn's log loss warns): renormalised in float64.
    probabilities = raw.reshape(-1, len(contract.classes))
    return np.asarray(probabilities / probabilities.sum(axis=1, keepdims=True))


def probabilities_json(probabilities: np.ndarray, classes: list[str]) -> list[str]:
    """Each row's class probabilities as a JSON object {class: p}, built column by column (a row-wise
    json.dumps costs seconds per million rows); floats keep their shortest exact text."""
    if not len(probabilities):
        return []
    text = pd.Series("{", index=range(len(probabilities)), dtype="string")
    for position, name in enumerate(classes):
        separator = ", " if position else ""
        text = text + f"{separator}{json.dumps(name)}: " + pd.Series(probabilities[:, position]).astype(str)
    return [str(t) for t in (text + "}").tolist()]


def parse_probabilities(values: pd.Series, classes: list[str]) -> np.ndarray:
    """Logged class probabilities (JSON objects) as a matrix in `classes` order; a class a model did
    not know has probability 0."""
    if not len(values):
        return np.zeros((0, len(classes)))
    records = pd.DataFrame.from_records([json.loads(v) for v in values])
    return np.asarray(records.reindex(columns=classes, fill_value=0.0).fillna(0.0).to_numpy(dtype="float64"))


def aligned_probabilities(probabilities: np.ndarray, model_classes: list[str], classes: list[str]) -> np.ndarray:
    """A model's class probabilities in another class order (the spec's); a class it never knew gets 0."""
    aligned = np.zeros((len(probabilities), len(classes)))
    for position, name in enumerate(classes):
        if name in model_classes:
            aligned[:, position] = probabilities[:, model_classes.index(name)]
    return aligned


def prediction_columns(contract: FeatureContract, raw: np.ndarray) -> dict[str, Any]:
    """What a prediction logs: `score` (the probability, the value, or the top class's probability) and,
    for multiclass, `predicted_class` and `class_probabilities`."""
    if not contract.task.has_classes:
        return {"score": raw}
    classes = contract.classes or []
    top = raw.argmax(axis=1) if len(raw) else np.zeros(0, dtype="int64")
    return {
        "score": raw[np.arange(len(raw)), top],
        "predicted_class": np.asarray(classes, dtype=object)[top],
        "class_probabilities": probabilities_json(raw, classes),
    }


def contract_of(booster: Any) -> FeatureContract:
    payload = booster.attr(CONTRACT_ATTRIBUTE)
    if payload is None:
        raise ContractError(f"model has no '{CONTRACT_ATTRIBUTE}' attribute: it was not trained by this pipeline")
    return FeatureContract.from_json(payload)
