"""`pipelines doctor`: every alias resolves to a READY, loadable version whose source run still exists,
and agrees with the recorded history (an alias moved outside the pipeline leaves a gap in the audit)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from pipelines.config import Settings
from pipelines.registry import ALIASES, VersionNotServable, alias_version, check_servable, recorded_alias


@dataclass
class Checkup:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_model(settings: Settings, engine: Engine, model_name: str, checkup: Checkup) -> None:
    for alias in ALIASES:
        version = alias_version(settings, model_name, alias)
        recorded = recorded_alias(engine, model_name, alias)
        if version is None:
            if recorded is not None:
                checkup.problems.append(
                    f"{model_name}@{alias}: not set, but the history last moved it to v{recorded} "
                    "(the version or the alias was deleted in MLflow)"
                )
            else:
                checkup.ok.append(f"{model_name}@{alias}: not set yet")
            continue
        try:
            servable = check_servable(settings, model_name, version)
        except VersionNotServable as exc:
            checkup.problems.append(f"{model_name}@{alias} -> v{version}: {exc}")
            continue
        if recorded != version:
            checkup.problems.append(
                f"{model_name}@{alias} -> v{version}, but the history last moved it to "
                f"{'nothing' if recorded is None else f'v{recorded}'}: it was moved outside the pipeline; "
                f"move it with `pipelines rollback {model_name} VERSION` so the move is recorded"
            )
            continue
        checkup.ok.append(
            f"{model_name}@{alias} -> v{version}: READY, run {servable.run_id} present, booster file safe and as trained"
        )


def doctor(settings: Settings, engine: Engine, model_names: list[str]) -> Checkup:
    checkup = Checkup()
    for name in model_names:
        check_model(settings, engine, name, checkup)
    return checkup
