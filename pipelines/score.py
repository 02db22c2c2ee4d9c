"""Stage 5: score an interval with the champion and log every prediction.

The scored inputs (exactly what the model saw, plus its score) are kept in the lake before the
predictions are upserted, so a prediction can always be replayed. Re-scoring an interval with
the same model changes no row.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from pipelines import tables
from pipelines.config import Settings
from pipelines.features import contract_of, predict, unseen_category_counts
from pipelines.intervals import hours_between
from pipelines.lake import hour_partition, read_hours, read_partition, write_partition
from pipelines.registry import champion_version, load_booster
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

CHUNK_ROWS = 100_000


class NoChampionError(RuntimeError):
    """Scoring needs a champion; run the train DAG first (or roll back to a version)."""


@dataclass(frozen=True)
class ScoreResult:
    model_version: str
    rows: int
    unseen_categories: dict[str, int]
    scored_paths: list[str]


def row_sha256(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """A fingerprint of each row's raw feature values, to tie a prediction to its exact inputs."""
    text = frame[columns].astype("string").fillna("\x00").agg("\x1f".join, axis=1)
    return [hashlib.sha256(value.encode()).hexdigest() for value in text]


def score_hour(spec: ModelSpec, settings: Settings, booster: object, version: str, hour: datetime) -> pd.DataFrame:
    contract = contract_of(booster)
    frame, _ = read_partition(hour_partition(settings.lake, spec.name, "raw", hour))
    keyless = frame[spec.entity_key].isna() | frame[spec.timestamp].isna()
    if keyless.any():
        # Only reachable under validation policy 'warn': a prediction without its key cannot be logged.
        log.warning(
            "%s: %d row(s) of %s lack %s or %s and are not scored",
            spec.name,
            int(keyless.sum()),
            hour.isoformat(),
            spec.entity_key,
            spec.timestamp,
        )
        frame = frame[~keyless]
    scores = (
        np.concatenate(
            [predict(booster, contract, frame.iloc[i : i + CHUNK_ROWS]) for i in range(0, len(frame), CHUNK_ROWS)]
        )
        if len(frame)
        else np.array([], dtype="float64")
    )
    scored = frame[[spec.entity_key, spec.timestamp, *contract.columns]].copy()
    scored["score"] = scores
    scored["model_version"] = version
    scored["features_sha256"] = row_sha256(frame, contract.columns)
    return scored


def score_interval(
    spec: ModelSpec, settings: Settings, engine: Engine, start: datetime, end: datetime, dag_run_id: str
) -> ScoreResult:
    version = champion_version(settings, spec.name)
    if version is None:
        raise NoChampionError(f"{spec.name}: no version has the 'champion' alias; run {spec.name}__train first")
    booster = load_booster(settings, spec.name, version)
    contract = contract_of(booster)
    total, unseen, paths = 0, {c: 0 for c in contract.categorical}, []
    scored_at = datetime.now(UTC)
    for hour in hours_between(start, end):
        scored = score_hour(spec, settings, booster, version, hour)
        for column, count in unseen_category_counts(scored, contract).items():
            unseen[column] += count
        # Lake first: if the database write fails, the retry rewrites the same file and upserts again.
        partition = write_partition(
            hour_partition(settings.lake, spec.name, "scored", hour),
            scored,
            {
                "model": spec.name,
                "model_version": version,
                "interval_start": hour.isoformat(),
                "dag_run_id": dag_run_id,
            },
        )
        paths.append(str(partition.path))
        rows = [
            {
                "model_name": spec.name,
                "entity_id": entity,
                "as_of": as_of.to_pydatetime(),
                "model_version": version,
                "score": float(score),
                "features_sha256": sha,
                "dag_run_id": dag_run_id,
                "scored_at": scored_at,
            }
            for entity, as_of, score, sha in zip(
                scored[spec.entity_key], scored[spec.timestamp], scored["score"], scored["features_sha256"], strict=True
            )
        ]
        tables.upsert(
            engine,
            tables.predictions,
            rows,
            key=["model_name", "entity_id", "as_of"],
            update_when_changed=["model_version", "score", "features_sha256"],
        )
        total += len(rows)
    if any(unseen.values()):
        log.warning("%s: categories unseen in training (scored as missing): %s", spec.name, unseen)
    return ScoreResult(version, total, unseen, paths)


def read_scored(spec: ModelSpec, lake: Path, start: datetime, end: datetime) -> pd.DataFrame:
    return read_hours(lake, spec.name, "scored", hours_between(start, end))
