"""Stage 4: register the trained model as `challenger`, judge it against the champion, promote.

The decision of one train DAG run is made once: it is written to the challenger's MLflow run
(`gate/decision.json`), to tags on the version, and to a model_events row, and a re-run of the
same DAG run reads that row back instead of deciding again. Promotion re-checks that the
champion is still the one the decision compared against.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from pipelines.core.errors import PermanentError, StaleDecisionError, VersionNotServableError
from pipelines.core.features import aligned_probabilities, class_index, contract_of, predict
from pipelines.core.spec import ModelSpec
from pipelines.stages.gate import (
    HIGHER_IS_BETTER,
    GateDecision,
    Verdict,
    below_the_base_rate,
    bounded_holdout,
    judge,
    judge_replay,
)
from pipelines.storage import tables
from pipelines.storage.registry import (
    APPROVE,
    BASELINE_TAG,
    CHALLENGER,
    CHAMPION,
    LoadedModel,
    champion_version,
    fresh_from,
    load_model,
    mlflow_client,
    move_alias,
    record_event,
    register_version,
)
from pipelines.storage.settings import Settings
from pipelines.storage.tracking import download_run_artifact

log = logging.getLogger(__name__)


def register_challenger(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    run_id: str,
    model_uri: str,
    *,
    lineage: dict[str, str],
    dag_run_id: str,
    actor: str,
) -> str:
    version = register_version(settings, spec.name, run_id, model_uri, lineage)
    move_alias(
        settings,
        engine,
        spec.name,
        CHALLENGER,
        version,
        reason=f"trained by MLflow run {run_id}",
        dag_run_id=dag_run_id,
        actor=actor,
    )
    return version


def recorded_decision(engine: Engine, model_name: str, version: str, dag_run_id: str) -> GateDecision | None:
    e = tables.model_events
    with engine.connect() as connection:
        details = connection.execute(
            select(e.c.details)
            .where(
                e.c.model_name == model_name,
                e.c.event == "gate_decision",
                e.c.to_version == version,
                e.c.dag_run_id == dag_run_id,
            )
            .order_by(e.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    return None if details is None else GateDecision.model_validate_json(details)


def _scores(spec: ModelSpec, model: LoadedModel, frame: pd.DataFrame) -> Any:
    """The model's predictions; multiclass probabilities in the spec's class order, whatever the model's."""
    contract = contract_of(model.booster)
    raw = predict(model.booster, contract, frame)
    return (
        aligned_probabilities(raw, contract.classes or [], spec.label.classes or []) if spec.task.has_classes else raw
    )


def gate_labels(spec: ModelSpec, holdout: pd.DataFrame) -> pd.DataFrame:
    """The holdout with its label as the gate's statistics read it (a class index for multiclass)."""
    if not spec.task.has_classes:
        return holdout
    index = class_index(holdout[spec.label.column], spec.label.classes or [], f"{spec.name} holdout")
    return holdout.assign(**{spec.label.column: index})


def baseline_scores(spec: ModelSpec, baseline: dict[str, Any] | None, rows: int) -> np.ndarray | None:
    """What the task's trivial model (recorded at training) predicts for `rows` holdout rows; None when
    the floor is off (gate.beat_base_rate) or the version predates recorded baselines."""
    if baseline is None or not spec.gate.beat_base_rate:
        return None
    if spec.task.has_classes:
        priors = baseline[spec.task.baseline]
        return np.tile([float(priors.get(c, 0.0)) for c in spec.label.classes or []], (rows, 1))
    return np.full(rows, float(baseline[spec.task.baseline]))


def _judge_against_champion(
    spec: ModelSpec,
    settings: Settings,
    challenger: LoadedModel,
    champion: LoadedModel | None,
    holdout: pd.DataFrame,
    baseline: dict[str, Any] | None,
) -> tuple[Verdict, dict[str, Any]]:
    """The verdict and what it was based on (the holdout actually used)."""
    gate, ts = spec.gate, spec.timestamp
    used = {"rows_offered": len(holdout), "fresh_from": None}
    if champion is None:
        holdout = bounded_holdout(holdout, gate.max_holdout_rows, gate.seed)
        scores = _scores(spec, challenger, holdout)
        verdict = judge(gate, holdout, spec.label.column, scores, None, baseline_scores(spec, baseline, len(holdout)))
        return verdict, {**used, "rows": len(holdout)}
    # The floor first, on the candidate's whole holdout (rows it never saw): a model that learned
    # nothing is kept out whatever the champion, and however few rows are newer than the champion's.
    whole = bounded_holdout(holdout, gate.max_holdout_rows, gate.seed)
    baseline_rows = baseline_scores(spec, baseline, len(whole))
    floor = None
    if baseline_rows is not None:
        kept, floor = below_the_base_rate(
            gate, whole, spec.label.column, _scores(spec, challenger, whole), baseline_rows
        )
        if kept is not None:
            return kept, {**used, "rows": len(whole)}
    champion_seen = fresh_from(settings, spec.name, champion.version)
    seen_until = None if champion_seen is None else pd.Timestamp(champion_seen)
    fresh = holdout if seen_until is None else holdout[holdout[ts] >= seen_until]
    used = {**used, "rows": len(fresh), "fresh_from": None if seen_until is None else seen_until.isoformat()}
    if len(fresh) < gate.min_holdout_rows:
        reason = (
            f"only {len(fresh)} holdout rows are newer than champion v{champion.version}'s training data "
            f"(from {seen_until}); need gate.min_holdout_rows={gate.min_holdout_rows} for a fair comparison"
        )
        return Verdict(False, reason, None, [], floor), used
    fresh = bounded_holdout(fresh, gate.max_holdout_rows, gate.seed)
    used["rows"] = len(fresh)
    verdict = judge(gate, fresh, spec.label.column, _scores(spec, challenger, fresh), _scores(spec, champion, fresh))
    return replace(verdict, floor=floor), used


def _verdict(
    spec: ModelSpec,
    settings: Settings,
    version: str,
    champion: str | None,
    holdout: pd.DataFrame,
    baseline: dict[str, Any] | None,
) -> tuple[Verdict, dict[str, Any]]:
    """Challenger `version` judged against `champion`, each model loaded once."""
    if champion == version:
        used = {"rows_offered": len(holdout), "fresh_from": None}
        return Verdict(False, "already champion (a re-run of the training that promoted it)", None, []), used
    challenger = load_model(settings, spec.name, version, spec.task)
    if champion is None:
        return _judge_against_champion(spec, settings, challenger, None, holdout, baseline)
    try:
        champion_model = load_model(settings, spec.name, champion, spec.task)
    except VersionNotServableError as exc:
        # A champion that cannot serve (scoring refuses it too) is no yardstick: judge the challenger alone.
        verdict, used = _judge_against_champion(spec, settings, challenger, None, holdout, baseline)
        return replace(
            verdict, reason=f"champion v{champion} cannot serve ({exc}); judged alone: {verdict.reason}"
        ), used
    return _judge_against_champion(spec, settings, challenger, champion_model, holdout, baseline)


def verdict_fields(verdict: Verdict, mode: str, dag_id: str, dag_run_id: str) -> dict[str, Any]:
    """What every gate decision records of its verdict, whichever evidence it was reached on."""
    return {
        "interval": None if verdict.interval is None else asdict(verdict.interval),
        "slices": [asdict(s) for s in verdict.slices],
        "verdict": "promote" if verdict.promote else "keep",
        "action": planned_action(verdict.promote, mode),
        "reason": verdict.reason,
        "dag_id": dag_id,
        "dag_run_id": dag_run_id,
        "decided_at": datetime.now(UTC).isoformat(),
    }


def planned_action(promote: bool, mode: str) -> str:
    if not promote:
        return "keep_champion"
    return {"enabled": "promote", "dry_run": "dry_run", "manual": "await_approval"}[mode]


def record_decision(settings: Settings, engine: Engine, decision: GateDecision, artifact: str, actor: str) -> None:
    """One record of a gate decision, wherever it was made: the challenger's MLflow run, tags on the
    version and a model_events row (which a re-run of the same DAG run reads back)."""
    import mlflow

    model, version, champion = decision.model, decision.challenger_version, decision.champion_version
    client = mlflow_client(settings)
    with mlflow.start_run(run_id=decision.challenger_run_id):
        mlflow.log_dict(decision.record(), artifact)
    for key in ("verdict", "action", "reason", "dag_run_id"):
        client.set_model_version_tag(model, version, f"gate.{key}", str(getattr(decision, key))[:5000])
    client.set_model_version_tag(model, version, "gate.champion_version", str(champion))
    with engine.begin() as connection:
        record_event(
            connection, model, "gate_decision", reason=decision.reason, actor=actor,
            dag_run_id=decision.dag_run_id, from_version=champion, to_version=version, details=decision.record(),
        )  # fmt: skip
    log.info(
        "GATE %s v%s vs %s: %s, action %s (mode %s): %s",
        model,
        version,
        "no champion" if champion is None else f"champion v{champion}",
        decision.verdict.upper(),
        decision.action,
        decision.mode,
        decision.reason,
    )


def gate_challenger(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    version: str,
    *,
    dag_id: str,
    dag_run_id: str,
    actor: str,
    dry_run: bool = False,
    require_approval: bool = False,
) -> GateDecision:
    """Judge challenger `version` against the champion on the challenger's fresh holdout; record it."""
    earlier = recorded_decision(engine, spec.name, version, dag_run_id)
    if earlier is not None:
        log.info("GATE %s v%s: %s (decided earlier in this DAG run)", spec.name, version, earlier.verdict.upper())
        return earlier

    client = mlflow_client(settings)
    model_version = client.get_model_version(spec.name, version)
    run_id = model_version.run_id
    recorded_baseline = model_version.tags.get(BASELINE_TAG)
    baseline = json.loads(recorded_baseline) if recorded_baseline else None
    holdout = download_run_artifact(settings, run_id, "holdout/holdout.parquet", f"{spec.name} v{version}")
    holdout[spec.timestamp] = pd.to_datetime(holdout[spec.timestamp], utc=True)
    champion = champion_version(settings, spec.name)
    verdict, used = _verdict(spec, settings, version, champion, gate_labels(spec, holdout), baseline)
    # A run's params can only make the spec's mode more cautious: dry_run > manual > enabled.
    mode = spec.gate.mode
    if dry_run:
        mode = "dry_run"
    elif require_approval and mode == "enabled":
        mode = "manual"
    decision = GateDecision(
        model=spec.name,
        challenger_version=version,
        challenger_run_id=run_id,
        champion_version=champion,
        metric=spec.gate.metric,
        higher_is_better=HIGHER_IS_BETTER[spec.gate.metric],
        mode=mode,
        gate=spec.gate.model_dump(),
        holdout={
            **used,
            "artifact": f"runs:/{run_id}/holdout/holdout.parquet",
            "start": holdout[spec.timestamp].min().isoformat() if len(holdout) else None,
            "end": holdout[spec.timestamp].max().isoformat() if len(holdout) else None,
        },
        # The candidate against its task's trivial model (gate.beat_base_rate), and that model.
        base_rate={
            "baseline": baseline if spec.gate.beat_base_rate else None,
            "interval": None if verdict.floor is None else asdict(verdict.floor),
        },
        **verdict_fields(verdict, mode, dag_id, dag_run_id),
    )
    record_decision(settings, engine, decision, "gate/decision.json", actor)
    return decision


def apply_decision(
    settings: Settings,
    engine: Engine,
    decision: GateDecision,
    *,
    approval: dict[str, Any] | None,
    dag_run_id: str,
    actor: str,
) -> str:
    """Carry out the gate's decision; in manual mode only after an approval. Returns what happened."""
    model, version, action = decision.model, decision.challenger_version, decision.action
    if action == "await_approval":
        if approval is None:
            raise PermanentError(f"{model} v{version} needs an approval in manual mode, but none was given")
        # No responder means the response timeout took the default (keep the champion).
        responder = (approval.get("responded_by_user") or {}).get("name")
        approver = f"airflow:{responder}" if responder else "airflow:timeout"
        approved = approval.get("chosen_options") == [APPROVE]
        with engine.begin() as connection:
            record_event(
                connection, model, "approval", reason="approved" if approved else "rejected", actor=approver,
                dag_run_id=dag_run_id, from_version=decision.champion_version, to_version=version,
            )  # fmt: skip
        if not approved:
            log.info("%s v%s: promotion rejected by %s; the champion stays", model, version, approver)
            return "rejected"
        actor = approver
    elif action != "promote":
        return action
    current = champion_version(settings, model)
    if current == version:
        return "promoted"
    if current != decision.champion_version:
        raise StaleDecisionError(
            f"{model}: the gate compared v{version} with champion v{decision.champion_version}, but the champion "
            f"is now v{current}; trigger a new train run to decide again"
        )
    move_alias(settings, engine, model, CHAMPION, version, reason=decision.reason, dag_run_id=dag_run_id, actor=actor)
    return "promoted"


def rejected_by_a_human(engine: Engine, model_name: str, version: str) -> bool:
    e = tables.model_events
    with engine.connect() as connection:
        return (
            connection.execute(
                select(e.c.id).where(
                    e.c.model_name == model_name,
                    e.c.event == "approval",
                    e.c.reason == "rejected",
                    e.c.to_version == version,
                    e.c.actor != "airflow:timeout",  # a timeout took the default; nobody said no
                )
            ).first()
            is not None
        )


def _replay_scores(spec: ModelSpec, evidence: pd.DataFrame, suffix: str) -> np.ndarray:
    if not spec.task.has_classes:
        return np.asarray(evidence[f"score{suffix}"].to_numpy(dtype="float64"))
    from pipelines.stages.backtest import PROBABILITY_PREFIX

    classes = range(len(spec.label.classes or []))
    return np.asarray(evidence[[f"{PROBABILITY_PREFIX}{k}{suffix}" for k in classes]].to_numpy(dtype="float64"))


def rehear_challenger(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    end: datetime,
    *,
    dag_id: str,
    dag_run_id: str,
    actor: str,
) -> GateDecision | None:
    """The second hearing of a kept challenger, after a backtest up to `end`: when its replay beat the
    champion's logged scores on the same rows over `gate.second_hearing_cohorts` whole cohorts, a decision
    in the spec's mode, recorded as a training's is. None when there is nothing to hear yet."""
    from pipelines.stages.backtest import logged_inputs_of, replay_evidence
    from pipelines.storage.registry import alias_version

    gate = spec.gate
    champion = champion_version(settings, spec.name)
    challenger = alias_version(settings, spec.name, CHALLENGER)
    if not gate.second_hearing_cohorts or champion is None or challenger is None or challenger == champion:
        return None
    earlier = recorded_decision(engine, spec.name, challenger, dag_run_id)
    if earlier is not None:  # a re-run of this DAG run: decided once
        return earlier
    if rejected_by_a_human(engine, spec.name, challenger):
        log.info("%s v%s: a human rejected its promotion; no second hearing", spec.name, challenger)
        return None
    evidence = replay_evidence(spec, settings, engine, challenger, champion, end)
    cohorts = sorted(evidence["cohort"].unique()) if not evidence.empty else []
    if len(cohorts) < gate.second_hearing_cohorts or len(evidence) < gate.min_holdout_rows:
        log.info(
            "%s: challenger v%s replayed %d rows of %d whole cohort(s) served by v%s; a second hearing needs "
            "gate.second_hearing_cohorts=%d and gate.min_holdout_rows=%d",
            spec.name, challenger, len(evidence), len(cohorts), champion, gate.second_hearing_cohorts,
            gate.min_holdout_rows,
        )  # fmt: skip
        return None
    offered = len(evidence)
    # The bootstrap costs rows x resamples: a seeded uniform sample keeps every cohort in proportion.
    evidence = bounded_holdout(evidence, gate.max_holdout_rows, gate.seed).reset_index(drop=True)
    if gate.slices:  # the slice columns' logged values, as the gate at training reads them from the holdout
        logged = logged_inputs_of(spec, settings, evidence)
        inputs = logged[[spec.entity_key, spec.timestamp, *gate.slices]].rename(
            columns={spec.entity_key: "entity_id", spec.timestamp: "as_of"}
        )
        evidence = evidence.merge(inputs.astype({"entity_id": str}), on=["entity_id", "as_of"], how="left")
    labelled = gate_labels(spec, evidence.rename(columns={"label": spec.label.column}))
    verdict = judge_replay(
        gate,
        labelled,
        spec.label.column,
        _replay_scores(spec, evidence, "_challenger"),
        _replay_scores(spec, evidence, ""),
        evidence["cohort"].to_numpy(),
    )
    mode = gate.mode
    client = mlflow_client(settings)
    decision = GateDecision(
        model=spec.name,
        hearing="second: the backtest's replay",
        challenger_version=challenger,
        challenger_run_id=client.get_model_version(spec.name, challenger).run_id,
        champion_version=champion,
        metric=gate.metric,
        higher_is_better=HIGHER_IS_BETTER[gate.metric],
        mode=mode,
        gate=gate.model_dump(),
        replay={"rows_offered": offered, "rows": len(evidence), "cohorts": cohorts, "labels_as_of": end.isoformat()},
        **verdict_fields(verdict, mode, dag_id, dag_run_id),
    )
    record_decision(settings, engine, decision, f"gate/second_hearing_{end:%Y%m%dT%H%M}.json", actor)
    return decision
