"""Stage 6: join logged predictions with the labels that have matured, metrics per cohort x version.

A cohort is the UTC date of `as_of`. Only labels that had arrived before the end of the
backtest's interval are used (intervals are half-open), and only predictions whose label delay
had passed by then: a backtest run for a past interval gives the same answer today as it did then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, select

from pipelines import tables
from pipelines.spec import ModelSpec
from pipelines.train import binary_metrics


@dataclass(frozen=True)
class BacktestResult:
    cohorts: int
    rows: int
    metrics: list[dict[str, object]]


def matured_predictions(spec: ModelSpec, engine: Engine, end: datetime) -> pd.DataFrame:
    p, lab = tables.predictions, tables.labels
    since = end - timedelta(days=spec.backtest.lookback_days)
    matured_before = end - timedelta(hours=spec.label.delay_hours)
    query = (
        select(p.c.entity_id, p.c.as_of, p.c.model_version, p.c.score, lab.c.label)
        .select_from(
            p.join(
                lab,
                and_(lab.c.model_name == p.c.model_name, lab.c.entity_id == p.c.entity_id, lab.c.as_of == p.c.as_of),
            )
        )
        .where(
            p.c.model_name == spec.name,
            p.c.as_of >= since,
            p.c.as_of < matured_before,
            lab.c.arrived_at < end,
        )
    )
    with engine.connect() as connection:
        frame = pd.DataFrame(
            connection.execute(query).all(), columns=["entity_id", "as_of", "model_version", "score", "label"]
        )
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    return frame


def cohort_metrics(frame: pd.DataFrame) -> list[dict[str, object]]:
    rows = []
    for (cohort, version), group in frame.groupby([frame["as_of"].dt.strftime("%Y-%m-%d"), "model_version"]):
        labels, scores = group["label"].to_numpy(dtype=int), group["score"].to_numpy(dtype=float)
        metrics = binary_metrics(labels, np.clip(scores, 1e-7, 1 - 1e-7))
        rows.append(
            {
                "cohort": cohort,
                "model_version": str(version),
                "n": len(group),
                "positives": int(labels.sum()),
                "auc": metrics.get("auc"),
                "logloss": metrics["logloss"],
                "brier": metrics["brier"],
                "mean_score": float(scores.mean()),
            }
        )
    return rows


def backtest(spec: ModelSpec, engine: Engine, end: datetime, dag_run_id: str) -> BacktestResult:
    frame = matured_predictions(spec, engine, end)
    metrics = cohort_metrics(frame)
    tables.upsert(
        engine,
        tables.backtest_metrics,
        [{**row, "model_name": spec.name, "labels_as_of": end, "dag_run_id": dag_run_id} for row in metrics],
        key=["model_name", "cohort", "model_version"],
    )
    return BacktestResult(cohorts=len({m["cohort"] for m in metrics}), rows=len(frame), metrics=metrics)
