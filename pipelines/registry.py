"""Stage 4: register the trained model, alias it `challenger`, and promote it to `champion` only
when there is no champion yet or it is not worse than the champion on the same holdout.

Every alias move writes a model_events row. The full noise-aware gate comes later; this one
already never promotes blindly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, insert

from pipelines import tables
from pipelines.config import Settings
from pipelines.features import contract_of, predict
from pipelines.spec import ModelSpec
from pipelines.tracking import use_tracking
from pipelines.train import binary_metrics, download_run_artifact

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
HIGHER_IS_BETTER = {"auc": True, "logloss": False}


class RegistrationError(RuntimeError):
    """The model version could not be registered or never became READY."""


@dataclass(frozen=True)
class GateDecision:
    model_name: str
    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_value: float
    champion_value: float | None
    holdout_rows: int
    promoted: bool
    reason: str


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def alias_version(settings: Settings, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when it points nowhere (or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    use_tracking(settings)
    try:
        return str(_client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def champion_version(settings: Settings, model_name: str) -> str | None:
    return alias_version(settings, model_name, CHAMPION)


def load_booster(settings: Settings, model_name: str, version: str) -> Any:
    """Load a registered version with the xgboost flavor (never pickle, never pyfunc)."""
    import mlflow.xgboost

    use_tracking(settings)
    return mlflow.xgboost.load_model(f"models:/{model_name}/{version}")


def register_version(settings: Settings, model_name: str, run_id: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register the run's model once; a retry of the same run finds and reuses its version."""
    import mlflow

    use_tracking(settings)
    client = _client()
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    version = existing[0] if existing else mlflow.register_model(model_uri, model_name, tags=tags)
    deadline = time.monotonic() + 300
    while version.status != "READY":
        if version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistrationError(
                f"{model_name} version {version.version} is {version.status}: {version.status_message}"
            )
        time.sleep(1)
        version = client.get_model_version(model_name, version.version)
    return str(version.version)


def record_event(
    engine: Engine,
    model_name: str,
    event: str,
    reason: str,
    dag_run_id: str | None,
    actor: str,
    alias: str | None = None,
    from_version: str | None = None,
    to_version: str | None = None,
) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(tables.model_events).values(
                model_name=model_name,
                event=event,
                alias=alias,
                from_version=from_version,
                to_version=to_version,
                reason=reason,
                dag_run_id=dag_run_id,
                actor=actor,
                at=datetime.now(UTC),
            )
        )


def move_alias(
    settings: Settings,
    engine: Engine,
    model_name: str,
    alias: str,
    version: str,
    reason: str,
    dag_run_id: str | None,
    actor: str,
) -> None:
    """Point `alias` at `version` and log the move (no-op, and no event, if it already points there)."""
    current = alias_version(settings, model_name, alias)
    if current == version:
        return
    _client().set_registered_model_alias(model_name, alias, version)
    record_event(engine, model_name, "alias_moved", reason, dag_run_id, actor, alias, current, version)


def evaluate_on_holdout(
    settings: Settings, model_name: str, version: str, holdout: pd.DataFrame, label: str, metric: str
) -> float:
    booster = load_booster(settings, model_name, version)
    scores = predict(booster, contract_of(booster), holdout)
    value = binary_metrics(holdout[label].to_numpy(), scores).get(metric)
    if value is None:
        raise ValueError(f"metric '{metric}' is undefined on this holdout (a single class?)")
    return value


def decide(spec: ModelSpec, challenger: float, champion: float | None) -> tuple[bool, str]:
    """Promote when there is no champion or the challenger is not worse; direction from the metric."""
    metric = spec.gate.metric
    if champion is None:
        return True, "no champion yet"
    higher = HIGHER_IS_BETTER[metric]
    not_worse = challenger >= champion if higher else challenger <= champion
    comparison = f"{metric} {challenger:.4f} vs champion {champion:.4f} on the same holdout"
    return (True, f"not worse: {comparison}") if not_worse else (False, f"worse: {comparison}")


def register_and_gate(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    run_id: str,
    model_uri: str,
    dag_run_id: str,
    lineage: dict[str, str],
) -> GateDecision:
    import mlflow

    version = register_version(settings, spec.name, run_id, model_uri, lineage)
    move_alias(settings, engine, spec.name, CHALLENGER, version, f"trained by run {run_id}", dag_run_id, "train-dag")

    holdout = download_run_artifact(settings, run_id, "holdout/holdout.parquet")
    metric, label = spec.gate.metric, spec.label.column
    challenger_value = evaluate_on_holdout(settings, spec.name, version, holdout, label, metric)
    current = champion_version(settings, spec.name)
    champion_value = None
    if current is not None and current != version:
        champion_value = evaluate_on_holdout(settings, spec.name, current, holdout, label, metric)
    if current == version:
        promoted, reason = False, "already champion (re-run of the same training)"
    else:
        promoted, reason = decide(spec, challenger_value, champion_value)

    decision = GateDecision(
        spec.name, version, current, metric, challenger_value, champion_value, len(holdout), promoted, reason
    )
    record_event(engine, spec.name, "gate_decision", reason, dag_run_id, "train-dag", None, current, version)
    _client().set_model_version_tag(spec.name, version, "gate_decision", "promoted" if promoted else "kept_champion")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(asdict(decision), "gate/decision.json")
    if promoted:
        move_alias(settings, engine, spec.name, CHAMPION, version, reason, dag_run_id, "train-dag")
    log.info(
        "%s gate: version %s %s (%s)",
        spec.name,
        version,
        "PROMOTED to champion" if promoted else "NOT promoted",
        reason,
    )
    return decision
