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

from pipelines.errors import ContractError
from pipelines.spec import ModelSpec

CONTRACT_ATTRIBUTE = "pipelines_contract"


@dataclass(frozen=True)
class FeatureContract:
    numeric: list[str]
    categorical: dict[str, list[str]]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_json(self) -> str:
        # No sort_keys: the order of the columns is part of the contract.
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, payload: str) -> FeatureContract:
        data = json.loads(payload)
        return cls(numeric=list(data["numeric"]), categorical={k: list(v) for k, v in data["categorical"].items()})


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
    return FeatureContract(numeric=list(spec.features.numeric), categorical=categories)


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
        values = frame[column].astype("string").astype(object).where(frame[column].notna(), None)
        prepared[column] = pd.Categorical(values, categories=categories)
    return prepared


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
    import xgboost as xgb  # lazy: keeps this module cheap to import

    matrix = xgb.DMatrix(prepare_features(frame, contract), enable_categorical=True)
    return np.asarray(booster.predict(matrix), dtype="float64")


def contract_of(booster: Any) -> FeatureContract:
    payload = booster.attr(CONTRACT_ATTRIBUTE)
    if payload is None:
        raise ContractError(f"model has no '{CONTRACT_ATTRIBUTE}' attribute: it was not trained by this pipeline")
    return FeatureContract.from_json(payload)
