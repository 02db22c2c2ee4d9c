"""The MLflow registry as we use it: versions, the `champion`/`challenger` aliases, and their history.

Every alias move writes a model_events row in the same database transaction that is open while
MLflow moves the alias: if MLflow refuses, the row is rolled back; if the row cannot be written,
the alias is not moved. `pipelines history MODEL` reads those rows back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from pipelines.core.errors import ContractError, RegistrationError, UnsafeModelError, VersionNotServableError
from pipelines.storage import tables
from pipelines.storage.settings import Settings
from pipelines.storage.tracking import use_tracking

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
ALIASES = (CHAMPION, CHALLENGER)
REGISTRATION_TIMEOUT_S = 300
# The options of the human approval (gate mode manual); kept here, away from heavy imports, for the DAG file.
APPROVE, KEEP = "Promote to champion", "Keep the champion"


@dataclass(frozen=True)
class ServableVersion:
    version: str
    run_id: str


def mlflow_client(settings: Settings) -> Any:
    """A client on our tracking and registry URI (a fresh task process has not set it yet)."""
    from mlflow import MlflowClient

    use_tracking(settings)
    return MlflowClient()


def alias_version(settings: Settings, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when it points nowhere (or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client(settings).get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def champion_version(settings: Settings, model_name: str) -> str | None:
    return alias_version(settings, model_name, CHAMPION)


# What a version's MLmodel may say, for us to load it: the booster class itself, stored as JSON or UBJ,
# and no bundled code. Anything else is refused before a byte of the model is read.
MODEL_SHA256_TAG = "model_sha256"  # the booster file's sha256, recorded at training time
BASELINE_TAG = "training_baseline"  # JSON: the task's trivial model from the training split (pipelines/stages/train.py)
BOOSTER_CLASS = "xgboost.core.Booster"
MODEL_FORMATS = ("json", "ubj")


@dataclass(frozen=True)
class LoadedModel:
    version: str
    booster: Any  # xgboost.Booster, read from its file: no code from the artifact ran
    signature: Any  # mlflow ModelSignature, or None for a model logged without one
    sha256: str


def booster_file_of(mlmodel: Any, label: str) -> str:
    """The booster file an MLmodel names, after refusing anything that would make loading run code."""
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    if not isinstance(flavors, dict) or not isinstance(flavors.get("xgboost"), dict):
        raise UnsafeModelError(f"{label}: its MLmodel has no xgboost flavor; only XGBoost boosters are served")
    with_code = sorted(name for name, conf in flavors.items() if not isinstance(conf, dict) or conf.get("code"))
    if with_code or mlmodel.get("code"):
        raise UnsafeModelError(
            f"{label}: its MLmodel bundles code (flavor(s) {with_code or ['<root>']} name a 'code' path); "
            "models are loaded from their booster file only and bundled code is never imported"
        )
    flavor = flavors["xgboost"]
    model_class = flavor.get("model_class", BOOSTER_CLASS)
    if model_class != BOOSTER_CLASS:
        raise UnsafeModelError(
            f"{label}: its MLmodel names model_class '{model_class}'; only {BOOSTER_CLASS} is served"
        )
    data, model_format = str(flavor.get("data", "")), str(flavor.get("model_format", ""))
    if model_format not in MODEL_FORMATS or "/" in data or "\\" in data or not data.endswith(f".{model_format}"):
        raise UnsafeModelError(
            f"{label}: its model file '{data}' (format '{model_format}') is not a JSON or UBJ booster file "
            "in the model's folder; pickled or other formats are never loaded"
        )
    return data


# A booster larger than this is refused before a byte of it is read: no model we train comes near it
# (a 2,000-tree, depth-10 booster is ~100 MB as JSON), and reading one costs the scorer its memory.
MAX_MODEL_BYTES = int(os.environ.get("PIPELINES_MAX_MODEL_BYTES", str(512 * 2**20)))


def require_bounded_size(base: str, data: str, label: str) -> None:
    """The registry's listing gives the file's size: a file over MAX_MODEL_BYTES is refused unread."""
    import mlflow

    sizes = {Path(f.path).name: f.file_size for f in mlflow.artifacts.list_artifacts(artifact_uri=base)}
    size = sizes.get(data)
    if size is not None and size > MAX_MODEL_BYTES:
        raise UnsafeModelError(
            f"{label}: its model file '{data}' is {size:,} bytes, over the {MAX_MODEL_BYTES:,} a booster may be "
            "(PIPELINES_MAX_MODEL_BYTES); it was not read"
        )


def read_booster_file(settings: Settings, model_name: str, version: str) -> tuple[dict[str, Any], str, bytes]:
    """A version's MLmodel (as data), the name of its booster file, and that file's bytes; nothing is imported."""
    import tempfile
    from pathlib import Path

    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    label = f"{model_name} v{version}"
    base = f"models:/{model_name}/{version}"
    with tempfile.TemporaryDirectory() as scratch:
        try:
            text = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/MLmodel", dst_path=scratch)
            ).read_bytes()
        except (MlflowException, OSError) as exc:
            raise VersionNotServableError(f"{label}: its MLmodel cannot be read from the registry: {exc}") from exc
        try:
            mlmodel = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UnsafeModelError(f"{label}: its MLmodel is not plain YAML: {exc}") from exc
        if not isinstance(mlmodel, dict):
            raise UnsafeModelError(f"{label}: its MLmodel is not a mapping")
        data = booster_file_of(mlmodel, label)
        require_bounded_size(base, data, label)
        try:
            payload = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{data}", dst_path=scratch)
            ).read_bytes()
        except (MlflowException, OSError) as exc:
            raise VersionNotServableError(
                f"{label}: its model file '{data}' cannot be read from the registry: {exc}"
            ) from exc
    return mlmodel, data, payload


def _booster(payload: bytes, label: str) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(payload))
    except xgb.core.XGBoostError as exc:
        raise UnsafeModelError(f"{label}: its model file is not an XGBoost booster: {exc}") from exc
    return booster


def load_model(settings: Settings, model_name: str, version: str, task: str | None = None) -> LoadedModel:
    """A registered version's booster, read from its JSON/UBJ file after checking it is the file trained
    (and, given the spec's `task`, that it predicts that task).

    MLflow's own loaders honour the MLmodel's `code` and `model_class` fields, which lets whoever can
    write to the registry run code in every worker; we read the MLmodel as YAML, refuse such fields,
    check the file's sha256 against the `model_sha256` version tag and load it into `xgboost.Booster`.
    """
    from mlflow.models.signature import ModelSignature

    label = f"{model_name} v{version}"
    recorded = _model_version(settings, model_name, version).tags.get(MODEL_SHA256_TAG)
    mlmodel, data, payload = read_booster_file(settings, model_name, version)
    digest = hashlib.sha256(payload).hexdigest()
    if not recorded:
        raise UnsafeModelError(
            f"{label}: no '{MODEL_SHA256_TAG}' tag, so its file cannot be checked (versions registered before this "
            f"release, or outside the pipeline, have none). If you trust its file, record it with "
            f"`pipelines adopt-model {model_name} {version}`; otherwise roll back to a checked version or train a new one"
        )
    if digest != recorded:
        raise UnsafeModelError(
            f"{label}: its model file '{data}' has sha256 {digest}, not the {recorded} recorded at training "
            "time: the file was changed after registration"
        )
    try:
        signature = ModelSignature.from_dict(mlmodel["signature"]) if mlmodel.get("signature") else None
    except Exception as exc:  # a malformed signature: whatever the parser raises, name the version
        raise UnsafeModelError(f"{label}: its MLmodel's signature cannot be read: {exc}") from exc
    booster = _booster(payload, label)
    if task is not None:
        from pipelines.core.features import contract_of

        predicts = contract_of(booster).task
        if predicts != task:
            raise VersionNotServableError(
                f"{label} predicts task {predicts}, but the spec's task is {task}: train a version for this task, "
                "or roll back to one"
            )
    return LoadedModel(str(version), booster, signature, digest)


def _model_version(settings: Settings, model_name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{model_name}'"))
        raise VersionNotServableError(
            f"{model_name} has no version '{version}' (registered versions: {known or 'none'})"
        ) from exc


def adopt_version(settings: Settings, engine: Engine, model_name: str, version: str, *, reason: str, actor: str) -> str:
    """Record the sha256 of a version registered without one (before this release), after the same
    checks a scorer makes; from then on its file is checked like any other. Returns the sha256."""
    from pipelines.core.features import contract_of

    label = f"{model_name} v{version}"
    recorded = _model_version(settings, model_name, version).tags.get(MODEL_SHA256_TAG)
    _, data, payload = read_booster_file(settings, model_name, version)
    digest = hashlib.sha256(payload).hexdigest()
    if recorded == digest:
        return digest
    if recorded:
        raise UnsafeModelError(
            f"{label}: its model file '{data}' has sha256 {digest}, not the {recorded} recorded at training "
            "time: the file was changed after registration and is not adopted"
        )
    try:
        contract_of(_booster(payload, label))
    except ContractError as exc:
        raise UnsafeModelError(f"{label}: {exc}") from exc
    with engine.begin() as connection:
        record_event(
            connection, model_name, "model_adopted", reason=reason, actor=actor, to_version=str(version),
            details={"sha256": digest},
        )  # fmt: skip
        mlflow_client(settings).set_model_version_tag(model_name, str(version), MODEL_SHA256_TAG, digest)
    return digest


def load_booster(settings: Settings, model_name: str, version: str) -> Any:
    return load_model(settings, model_name, version).booster


def seen_until(tags: dict[str, str]) -> datetime | None:
    """The end of the data a model was fitted (and early-stopped) on, from its run's tags; later rows are new to it."""
    value = tags.get("trained_until") or tags.get("window_end")
    return datetime.fromisoformat(value) if value else None


def fresh_from(settings: Settings, model_name: str, version: str) -> datetime | None:
    """Where the data a registered version was fitted on ends."""
    client = mlflow_client(settings)
    return seen_until(client.get_run(client.get_model_version(model_name, version).run_id).data.tags)


def newest_training_end(settings: Settings, model_name: str) -> datetime | None:
    """The training window end of the newest registered version (None before the first)."""
    client = mlflow_client(settings)
    versions = client.search_model_versions(f"name = '{model_name}'")
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    value = client.get_run(newest.run_id).data.tags.get("window_end")
    return datetime.fromisoformat(value) if value else None


def register_version(settings: Settings, model_name: str, run_id: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register the run's model once and wait until it is READY.

    A retry of the same run finds and reuses its version, so re-running a train DAG run never
    adds a second version. A version that fails or times out is an error: nothing is aliased.
    """
    import mlflow

    client = mlflow_client(settings)
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    version = existing[0] if existing else mlflow.register_model(model_uri, model_name, tags=tags)
    deadline = time.monotonic() + REGISTRATION_TIMEOUT_S
    while version.status != "READY":
        if version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistrationError(
                f"{model_name} version {version.version} is {version.status} after "
                f"{REGISTRATION_TIMEOUT_S}s: {version.status_message or 'no message'}; no alias was moved"
            )
        time.sleep(1)
        version = client.get_model_version(model_name, version.version)
    return str(version.version)


def record_event(
    connection: Any,
    model_name: str,
    event: str,
    *,
    reason: str,
    actor: str,
    dag_run_id: str | None = None,
    alias: str | None = None,
    from_version: str | None = None,
    to_version: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """One row of model_events: who did what to which version, when, in which DAG run, and why."""
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
            details=None if details is None else json.dumps(details, default=str),
        )
    )


def move_alias(
    settings: Settings,
    engine: Engine,
    model_name: str,
    alias: str,
    version: str,
    *,
    reason: str,
    dag_run_id: str | None,
    actor: str,
) -> bool:
    """Point `alias` at `version` and log the move; False (and no event) if it already points there."""
    current = alias_version(settings, model_name, alias)
    recorded = recorded_alias(engine, model_name, alias)
    if current == version == recorded:
        return False
    # A move made in MLflow by hand is recorded now, from where the history last had it: it gets a
    # reason and an actor, and scoring serves it again.
    previous = current if current != version else recorded
    with engine.begin() as connection:
        record_event(
            connection, model_name, "alias_moved", reason=reason, actor=actor, dag_run_id=dag_run_id, alias=alias,
            from_version=previous, to_version=version,
        )  # fmt: skip
        mlflow_client(settings).set_registered_model_alias(model_name, alias, version)
    was = "nothing" if previous is None else f"v{previous}"
    log.info("%s: alias %s moved %s -> v%s by %s (%s)", model_name, alias, was, version, actor, reason)
    return True


def check_servable(settings: Settings, model_name: str, version: str, task: str | None = None) -> ServableVersion:
    """The checks a version must pass before it serves: exists, READY, run alive, a safe booster file that loads
    (and predicts the spec's `task`, when given)."""
    from mlflow.exceptions import MlflowException

    from pipelines.core.features import contract_of

    client = mlflow_client(settings)
    model_version = _model_version(settings, model_name, version)
    if model_version.status != "READY":
        raise VersionNotServableError(f"{model_name} v{version} is {model_version.status}, not READY")
    try:
        run = client.get_run(model_version.run_id)
    except MlflowException as exc:
        raise VersionNotServableError(
            f"{model_name} v{version}: its source run {model_version.run_id} does not exist"
        ) from exc
    if run.info.lifecycle_stage == "deleted":
        raise VersionNotServableError(f"{model_name} v{version}: its source run {model_version.run_id} is deleted")
    try:
        contract_of(load_model(settings, model_name, str(version), task).booster)
    except VersionNotServableError:
        raise
    except Exception as exc:  # any failure to load means it cannot serve; say why
        raise VersionNotServableError(
            f"{model_name} v{version} does not load as an XGBoost booster: {type(exc).__name__}: {exc}"
        ) from exc
    return ServableVersion(str(version), model_version.run_id)


def rollback(
    settings: Settings,
    engine: Engine,
    model_name: str,
    task: str,
    version: str,
    *,
    reason: str,
    dag_run_id: str | None,
    actor: str,
) -> bool:
    """Move `champion` to an earlier version after checking it can serve the spec's task; a bad version changes nothing."""
    check_servable(settings, model_name, version, task)
    moved = move_alias(
        settings,
        engine,
        model_name,
        CHAMPION,
        str(version),
        reason=f"rollback: {reason}",
        dag_run_id=dag_run_id,
        actor=actor,
    )
    if not moved:
        log.info("%s: v%s is already the champion; nothing to roll back", model_name, version)
    return moved


def history(engine: Engine, model_name: str) -> list[dict[str, Any]]:
    """Every recorded event of a model, oldest first."""
    e = tables.model_events
    with engine.connect() as connection:
        rows = connection.execute(select(e).where(e.c.model_name == model_name).order_by(e.c.id)).mappings().all()
    return [dict(row) for row in rows]


def alias_since(engine: Engine, model_name: str, alias: str, version: str) -> datetime | None:
    """When the alias was last moved to `version`, per the history (None if never recorded)."""
    e = tables.model_events
    with engine.connect() as connection:
        at = connection.execute(
            select(e.c.at)
            .where(
                e.c.model_name == model_name, e.c.event == "alias_moved", e.c.alias == alias, e.c.to_version == version
            )
            .order_by(e.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    return None if at is None else (at if at.tzinfo else at.replace(tzinfo=UTC))


def recorded_alias(engine: Engine, model_name: str, alias: str) -> str | None:
    """Where the history says the alias points: the target of its last recorded move."""
    e = tables.model_events
    with engine.connect() as connection:
        return connection.execute(
            select(e.c.to_version)
            .where(e.c.model_name == model_name, e.c.event == "alias_moved", e.c.alias == alias)
            .order_by(e.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
