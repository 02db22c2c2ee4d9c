"""GPU against CPU training, through the project's train path (`train_model`: one MLflow run with its
dataset sample, metrics, holdout and the model) and through a bare xgboost script, on the same rows,
time split and parameters, in the same process.

The data is HIGGS-shaped: `--rows` events of 28 numeric features over 30 days, a binary label that
depends on them non-linearly. Early stopping is off, so every run trains exactly `--rounds` rounds.
CUDA runs only where XGBoost sees a GPU (`choose_device("auto")`); elsewhere the CUDA rows say so.
Run it on the GPU machine with its CPU cores as the baseline:

    python bench/train_gpu.py [--rows 10000000] [--features 28] [--rounds 200]
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
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from score_interval import MODEL

LABEL = "label"


def higgs_like(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    """Float32-valued features, a label from a non-linear score plus noise, times spread over 30 days."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, features), dtype=np.float32)
    weights = rng.standard_normal(features).astype(np.float32)
    score = values @ weights + np.sin(values[:, 0] * values[:, 1]) * 2 + np.abs(values[:, 2]) - 0.8
    frame = pd.DataFrame(values, columns=[f"f{i:02d}" for i in range(features)]).astype("float64")
    frame[LABEL] = (score + rng.logistic(size=rows) > 0).astype("int64")
    frame["event_id"] = pd.RangeIndex(rows).astype("string")
    start = pd.Timestamp(datetime(2026, 1, 1, tzinfo=UTC))
    frame["event_time"] = start + pd.to_timedelta(np.arange(rows) * (30 * 86_400 / rows), unit="s")
    return frame


def bench_spec(features: int, rounds: int, device: str) -> Any:
    """demo_churn's spec with this data's columns: 28 numeric features, no categories, no early stop."""
    from pipelines.core.spec import ModelSpec
    from pipelines.storage.settings import get_settings

    raw = yaml.safe_load((get_settings().specs_dir / f"{MODEL}.yaml").read_text())
    raw["entity_key"], raw["timestamp"] = "event_id", "event_time"
    raw["label"] = {**raw["label"], "column": LABEL}
    raw["features"] = {"numeric": [f"f{i:02d}" for i in range(features)], "categorical": []}
    raw["training"] |= {"num_boost_round": rounds, "early_stopping_rounds": rounds, "device": device}
    raw["training"]["params"] = {k: v for k, v in raw["training"]["params"].items() if k != "max_cat_to_onehot"}
    raw["training"]["params"] |= {"max_depth": 8, "max_bin": 256}
    raw["gate"]["slices"] = raw["backtest"]["slices"] = []
    return ModelSpec.model_validate(raw)


def bare_script(frame: pd.DataFrame, spec: Any, params: dict[str, Any], rounds: int) -> float:
    """The same split, QuantileDMatrix pair and rounds, with nothing logged."""
    import xgboost as xgb

    from pipelines.stages.train import time_split

    began = time.perf_counter()
    train, valid, _ = time_split(frame, spec.timestamp, spec.training)
    columns = spec.features.numeric
    dtrain = xgb.QuantileDMatrix(train[columns], label=train[LABEL], max_bin=params.get("max_bin", 256))
    dvalid = xgb.QuantileDMatrix(valid[columns], label=valid[LABEL], ref=dtrain)
    xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dvalid, "valid")], verbose_eval=False)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as home:
        os.environ["PIPELINES_HOME"] = home
        os.environ["GIT_PYTHON_REFRESH"] = "quiet"
        import mlflow.xgboost  # noqa: F401  (imported before timing, as in a warm worker)
        import xgboost as xgb

        from pipelines.stages.train import choose_device, train_model
        from pipelines.storage.settings import get_settings

        settings = get_settings()
        cuda = choose_device("auto") == "cuda"
        began = time.perf_counter()
        frame = higgs_like(args.rows, args.features)
        print(f"train_gpu: {platform.machine()} {os.cpu_count()} CPU cores, xgboost {xgb.__version__}, "
              f"CUDA {'usable' if cuda else 'not usable here'}; {len(frame):,} rows x {args.features} features, "
              f"{args.rounds} rounds, hist, max_depth 8 (data made in {time.perf_counter() - began:.0f} s)")  # fmt: skip
        tags = {"data_uri": "file:///bench", "data_sha256": "0" * 64, "run_name": "bench"}
        seconds: dict[tuple[str, str], float] = {}
        for device in ("cpu", "cuda") if cuda else ("cpu",):
            spec = bench_spec(args.features, args.rounds, device)
            params = {"tree_method": "hist", "seed": 0, "objective": spec.objective, **spec.training.params,
                      "device": device}  # fmt: skip
            small = frame.head(20_000)
            bare_script(small, spec, params, 2)  # warm-up: first-call costs (CUDA context) out of both timings
            train_model(spec, small, settings, tags, {"num_boost_round": 2})
            seconds["bare", device] = bare_script(frame, spec, params, args.rounds)
            began = time.perf_counter()
            result = train_model(spec, frame, settings, tags)
            seconds["project", device] = time.perf_counter() - began
            assert result.device == device, f"asked for {device}, trained on {result.device}"
            print(f"  {device:<4} bare script {seconds['bare', device]:7.1f} s   train_model {seconds['project', device]:7.1f} s"
                  f"  ({seconds['project', device] / seconds['bare', device]:.2f}x the bare script; "
                  f"holdout auc {result.metrics.get('holdout_auc', float('nan')):.4f})")  # fmt: skip
        if cuda:
            for path in ("bare", "project"):
                print(f"  CUDA speedup, {path:<7}: {seconds[path, 'cpu'] / seconds[path, 'cuda']:5.1f}x")
        else:
            print("  CUDA: not measured (XGBoost sees no usable GPU on this machine)")


if __name__ == "__main__":
    main()
