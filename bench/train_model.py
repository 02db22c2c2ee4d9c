"""`train_model` (one MLflow run: dataset sample, metrics, holdout, drift reference, the model) against a
bare pandas + xgboost script on the same rows, time split and parameters, in the same process.

The bare script types the categories with pandas, builds the same QuantileDMatrix pair and trains
with the same early stopping; it logs nothing. The ratio is what tracking, lineage and evaluation
cost on top of the training itself.

    python bench/train_model.py [--rows 1000000] [--rounds 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from score_interval import MODEL, big_hour


def labelled(rows: int) -> pd.DataFrame:
    frame = big_hour(datetime(2026, 1, 2, 0, tzinfo=UTC), rows, seed=1)
    from pipelines.dev.demo_data import churn_probability

    frame["churned"] = (np.random.default_rng(2).random(rows) < churn_probability(frame)).astype(int)
    for column in ("customer_id", "plan", "region", "payment_method"):
        frame[column] = frame[column].astype("string")
    for column in ("tenure_months", "support_calls"):
        frame[column] = frame[column].astype("float64")
    return frame


def bare_script(frame: pd.DataFrame, spec: object, params: dict[str, object], rounds: int) -> float:
    import xgboost as xgb

    from pipelines.stages.train import time_split

    began = time.perf_counter()
    train, valid, _ = time_split(frame, spec.timestamp, spec.training)  # type: ignore[attr-defined]
    features = spec.features  # type: ignore[attr-defined]
    columns = [*features.numeric, *features.categorical]

    def typed(part: pd.DataFrame) -> pd.DataFrame:
        out = part[columns].copy()
        for column in features.categorical:
            out[column] = out[column].astype("category")
        return out

    dtrain = xgb.QuantileDMatrix(typed(train), label=train["churned"], enable_categorical=True)
    dvalid = xgb.QuantileDMatrix(typed(valid), label=valid["churned"], ref=dtrain, enable_categorical=True)
    xgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=spec.training.early_stopping_rounds,  # type: ignore[attr-defined]
        verbose_eval=False,
    )
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as home:
        os.environ["PIPELINES_HOME"] = home
        os.environ["GIT_PYTHON_REFRESH"] = "quiet"
        import mlflow.xgboost  # noqa: F401  (imported before timing, as in a warm worker)
        import xgboost as xgb

        from pipelines.core.spec import load_spec
        from pipelines.stages.train import train_model
        from pipelines.storage.settings import get_settings

        settings = get_settings()
        spec = load_spec(settings.specs_dir / f"{MODEL}.yaml")
        frame = labelled(args.rows)
        params = {"tree_method": "hist", "seed": 0, "objective": spec.objective, **spec.training.params,
                  "device": "cpu"}  # fmt: skip
        print(f"train_model: {platform.machine()} {os.cpu_count()} cores, xgboost {xgb.__version__}, "
              f"{len(frame):,} rows x {len(spec.features.all)} features, up to {args.rounds} rounds, CPU")  # fmt: skip
        bare_script(frame.head(10_000), spec, params, 2)  # warm-up: first-call costs out of both timings
        bare = bare_script(frame, spec, params, args.rounds)
        tags = {"data_uri": "file:///bench", "data_sha256": "0" * 64, "run_name": "bench"}
        overrides = {"num_boost_round": args.rounds, "xgboost_params": {}}
        print(f"  bare pandas + xgboost script: {bare:6.1f} s")
        # First in this home and process: MLflow creates its tables and imports its model flavour.
        for label in ("first run (cold)", "second run (warm)"):
            began = time.perf_counter()
            result = train_model(spec, frame, settings, tags, overrides)
            ours = time.perf_counter() - began
            print(f"  train_model, {label:<16}: {ours:6.1f} s  ({ours / bare:.2f}x the bare script; "
                  f"best iteration {result.best_iteration}, training alone {result.metrics['train_seconds']:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
