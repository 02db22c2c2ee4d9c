"""Stage 5: score an interval with the champion and log every prediction.

The scored inputs (exactly what the model saw, plus its score) are kept in the lake before the
predictions are written, so any prediction can be replayed bit for bit. The log keeps what
served: re-running an hour scores it with the version that served it first, so nothing changes
and a retry after a failure between the lake write and the database write converges. Late rows
of an hour are added; a scoring that would change or remove a logged prediction is refused,
unless the run chooses another version explicitly (`rescore_with`): then the replaced rows move
to `predictions_history` and the lake keeps the earlier scored partition, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from pipelines.core.distinct import distinct_codes
from pipelines.core.errors import (
    BadDataError,
    ContractError,
    NoChampionError,
    PermanentError,
    RecordConflictError,
    VersionRefusedError,
)
from pipelines.core.features import (
    FeatureContract,
    contract_of,
    predict,
    prediction_columns,
    unseen_categories,
    unseen_category_counts,
)
from pipelines.core.intervals import STEP, partition_path, partitions_between
from pipelines.core.spec import ModelSpec
from pipelines.core.timing import StepTimes
from pipelines.stages.prediction_log import (
    LOG_COLUMNS,
    MULTICLASS_COLUMNS,
    partition_scope,
    prediction_rows,
    rewritten_rows,
    served_partition,
    write_predictions,
)
from pipelines.storage import bulk, tables
from pipelines.storage.lake import (
    DATA_FILE,
    ParquetStream,
    partition_chunks,
    partition_key,
    publish,
    read_partition,
)
from pipelines.storage.registry import CHAMPION, LoadedModel, champion_version, load_booster, load_model, recorded_alias
from pipelines.storage.settings import Settings

log = logging.getLogger(__name__)

CHUNK_ROWS = 100_000
NUMERIC_SIGNATURE_TYPES = {"double", "float", "long", "integer"}


@dataclass(frozen=True)
class ScoreResult:
    model_version: str
    rows: int
    unseen_categories: dict[str, int]
    scored_uris: list[str]
    stale_rows_deleted: int
    seconds: dict[str, float]  # by step: read, predict, fingerprint, lake, log


def column_text(series: pd.Series) -> Any:
    """Each value of a column as `astype("string")` writes it, missing as NUL: an Arrow string array,
    each distinct value converted once and gathered by code, with no Python string per row."""
    import pyarrow as pa

    codes, distinct = distinct_codes(series)
    texts = [*distinct.astype("string").fillna("\x00").to_numpy(dtype=object), "\x00"]  # the last: missing
    return pa.array(texts, type=pa.string()).take(pa.array(np.where(codes < 0, len(distinct), codes)))


def row_sha256(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """A fingerprint of each row's raw feature values, to tie a prediction to its exact inputs.

    The text of a row is its values as strings (missing as NUL) joined by the unit separator (see
    `column_text`), joined by Arrow; only the hashing is a Python loop (a row-wise pandas join costs
    tens of seconds per million rows).
    """
    if frame.empty:
        return []
    import pyarrow as pa
    import pyarrow.compute as pc

    joined = pc.binary_join_element_wise(*[column_text(frame[column]) for column in columns], "\x1f")
    return [digest.hexdigest() for digest in map(hashlib.sha256, joined.cast(pa.binary()).to_pylist())]


def check_inputs(frame: pd.DataFrame, signature: Any, model: str) -> None:
    """The inputs must have every column of the model's MLflow signature, each of the type it was trained on."""
    if signature is None or signature.inputs is None:
        raise ContractError(f"{model} was logged without an input signature; retrain it with this pipeline")
    for spec in signature.inputs.inputs:
        name, expected = spec.name, str(spec.type.name)
        if name not in frame.columns:
            raise ContractError(f"{model}: input column '{name}' ({expected}) is missing from the data to score")
        column = frame[name]
        if column.isna().all():
            continue  # an all-null column has no type to check; XGBoost treats it as missing
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        textual = pd.api.types.is_string_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype)
        if (expected in NUMERIC_SIGNATURE_TYPES and not numeric) or (expected == "string" and not textual):
            raise ContractError(
                f"{model}: input column '{name}' changed type: the model was trained on {expected}, "
                f"the data to score has {column.dtype}"
            )


def predict_chunked(booster: Any, contract: FeatureContract, frame: pd.DataFrame) -> np.ndarray:
    if not len(frame):
        return np.zeros((0, len(contract.classes)) if contract.task.has_classes and contract.classes else 0)
    chunks = [predict(booster, contract, frame.iloc[i : i + CHUNK_ROWS]) for i in range(0, len(frame), CHUNK_ROWS)]
    return np.concatenate(chunks)


def score_frame(
    spec: ModelSpec, booster: Any, signature: Any, version: str, part: datetime, frame: pd.DataFrame, times: StepTimes
) -> pd.DataFrame:
    """Rows of the partition with the model's score: exactly what the model saw and said."""
    contract = contract_of(booster)
    keyless = frame[spec.entity_key].isna() | frame[spec.timestamp].isna()
    if keyless.any():
        # Only reachable under validation policy 'warn': a prediction without its key cannot be logged.
        log.warning(
            "%s: %d row(s) of %s lack %s or %s and are not scored",
            spec.name,
            int(keyless.sum()),
            part.isoformat(),
            spec.entity_key,
            spec.timestamp,
        )
        frame = frame[~keyless]
    outside = (frame[spec.timestamp] < part) | (frame[spec.timestamp] >= part + STEP[spec.partition])
    if outside.any():
        # Each partition's predictions replace its rows: a row filed under another partition would be
        # deleted by that partition's re-scoring. The source must file events under their own partition.
        raise BadDataError(
            f"{spec.name}: {int(outside.sum())} row(s) of the partition for {part.isoformat()} have "
            f"{spec.timestamp} outside that {spec.partition}, e.g. {frame.loc[outside, spec.timestamp].head(3).tolist()}"
        )
    check_inputs(frame, signature, f"{spec.name} v{version}")
    # The model's inputs and every feature of the spec, so a challenger with other features can replay them.
    inputs = [c for c in dict.fromkeys([*contract.columns, *spec.features.all]) if c in frame.columns]
    scored = frame[[spec.entity_key, spec.timestamp, *inputs]].copy()
    with times.step("predict"):
        for column, values in prediction_columns(contract, predict_chunked(booster, contract, frame)).items():
            scored[column] = values
    scored["model_version"] = version
    with times.step("fingerprint"):
        scored["features_sha256"] = row_sha256(frame, contract.columns)
        scored["unseen_categories"] = unseen_categories(frame, contract).sum(axis=1).to_numpy(dtype="int64")
    return scored.reset_index(drop=True)


def score_partition(
    spec: ModelSpec,
    settings: Settings,
    booster: Any,
    signature: Any,
    version: str,
    part: datetime,
    times: StepTimes | None = None,
) -> pd.DataFrame:
    """The whole partition's raw rows with the model's score (`scored_chunks` yields it chunk by chunk)."""
    times = StepTimes() if times is None else times
    with times.step("read"):
        frame, _ = read_partition(settings.lake, partition_key(spec.name, "raw", part, spec.partition))
    return score_frame(spec, booster, signature, version, part, frame, times)


def scored_chunks(
    spec: ModelSpec, settings: Settings, model: LoadedModel, version: str, part: datetime, times: StepTimes
) -> Iterator[pd.DataFrame]:
    """The partition scored CHUNK_ROWS rows at a time, read from the lake as it goes: bounded memory."""
    chunks = partition_chunks(settings.lake, partition_key(spec.name, "raw", part, spec.partition), CHUNK_ROWS)
    while True:
        with times.step("read"):
            frame = next(chunks, None)
        if frame is None:
            return
        yield score_frame(spec, model.booster, model.signature, version, part, frame, times)


def scored_object(frames: Iterable[pd.DataFrame]) -> ParquetStream:
    """The scored partition's parquet object, a row group per chunk: the same bytes whether the
    partition was scored chunk by chunk or whole (then cut into the same chunks)."""
    stream = ParquetStream()
    for frame in frames:
        stream.write(frame)
    return stream


def chunks_of(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    yield frame.iloc[:CHUNK_ROWS].reset_index(drop=True)  # an empty frame is one (empty) chunk
    for offset in range(CHUNK_ROWS, len(frame), CHUNK_ROWS):
        yield frame.iloc[offset : offset + CHUNK_ROWS].reset_index(drop=True)


def write_new_partition(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    model: LoadedModel,
    version: str,
    part: datetime,
    *,
    dag_run_id: str,
    scored_at: datetime,
    times: StepTimes,
) -> tuple[int, dict[str, int]] | None:
    """Score a partition never scored before chunk by chunk, each chunk appended to the scored object
    and bulk-inserted into the log in one transaction; the partition is published once that commits.

    Returns (rows, unseen categories), or None having written nothing when the log already holds one
    of its keys (a concurrent writer; duplicate keys under policy 'warn'): the merge path decides then.
    """
    from sqlalchemy.exc import IntegrityError

    contract = contract_of(model.booster)
    unseen: Counter[str] = Counter()
    stream = ParquetStream()
    try:
        with engine.begin() as connection:
            if bulk.scope_has_rows(connection, tables.predictions, partition_scope(spec, part)):
                return None
            columns = [*LOG_COLUMNS, *(MULTICLASS_COLUMNS if contract.task.has_classes else ())]
            # One bulk load for the whole partition: on PostgreSQL the server stores a chunk while the next is scored.
            with times.entered("log", bulk.bulk_insert(connection, tables.predictions, columns)) as log_rows:
                for scored in scored_chunks(spec, settings, model, version, part, times):
                    unseen.update(unseen_category_counts(scored, contract))
                    with times.step("lake"):
                        stream.write(scored)
                    with times.step("log"):
                        log_rows(prediction_rows(spec, scored, dag_run_id, scored_at))
            # The object is stored before the commit, published after it: the lake never shows a
            # partition the log lacks. A failed publication leaves the log ahead, which the retry
            # repairs: it finds the logged rows, rescores them with their version and publishes.
            with times.step("lake"):
                staged = stream.stage(
                    settings.lake, spec.name, scored_manifest(spec, contract, version, part, dag_run_id, dict(unseen))
                )
    except IntegrityError:
        return None
    with times.step("lake"):
        publish(settings.lake, partition_key(spec.name, "scored", part, spec.partition), staged)
    return stream.rows, dict(unseen)


def scored_manifest(
    spec: ModelSpec, contract: FeatureContract, version: str, part: datetime, dag_run_id: str, unseen: dict[str, int]
) -> dict[str, Any]:
    return {
        "model": spec.name,
        "model_version": version,
        "interval_start": part.isoformat(),
        "dag_run_id": dag_run_id,
        "contract_columns": contract.columns,
        "unseen_categories": unseen,
    }


def _resolve(settings: Settings, spec: ModelSpec, choice: str) -> str:
    """`rescore_with` names 'champion' or a registered version number."""
    if choice == "champion":
        version = champion_version(settings, spec.name)
        if version is None:
            raise NoChampionError(f"{spec.name}: no version has the 'champion' alias; run {spec.name}__train first")
        return version
    if not choice.isdigit():
        raise PermanentError(
            f"{spec.name}: param rescore_with is '{choice}'; give 'champion' or a version number, e.g. 2"
        )
    return choice


def require_recorded_champion(spec: ModelSpec, engine: Engine, version: str) -> None:
    """The champion alias points where the pipeline's history last moved it: a move made in MLflow by
    hand has no reason, actor or gate decision on record, and is not served until it has one."""
    recorded = recorded_alias(engine, spec.name, CHAMPION)
    if recorded != version:
        raise VersionRefusedError(
            f"{spec.name}@champion -> v{version} in MLflow, but the pipeline's history last moved it to "
            f"{'nothing' if recorded is None else f'v{recorded}'}: it was moved outside the pipeline, so it is "
            f"not served; record the move with `pipelines rollback {spec.name} {version}` (or move it back)"
        )


def score_interval(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    dag_run_id: str,
    rescore_with: str | None = None,
) -> ScoreResult:
    """Score each partition of [start, end): a new one with the champion, a scored one with the version that served it.

    `rescore_with` ('champion' or a version) is the explicit choice to score every partition with that
    version, replacing what served (kept in predictions_history and the lake's scored_history).
    """
    models: dict[str, LoadedModel] = {}
    total, deleted, uris, versions = 0, 0, [], []
    unseen: Counter[str] = Counter()
    scored_at = datetime.now(UTC)
    times = StepTimes()
    for part in partitions_between(start, end, spec.partition):
        with times.step("read"):
            served = served_partition(spec, settings, engine, part)
        # A new partition gets the champion, a scored one the version that served it, unless rescore_with says.
        choice = (rescore_with or "champion") if rescore_with or served is None else None
        if choice is not None:
            version = _resolve(settings, spec, choice)
        else:
            assert served is not None
            version = served.version
        if version not in models:
            models[version] = load_model(settings, spec.name, version, spec.task)
            if choice == "champion":  # after load_model: an unsafe version is refused as such first
                require_recorded_champion(spec, engine, version)
        model = models[version]
        key = partition_key(spec.name, "scored", part, spec.partition)
        written = None
        if served is None:
            written = write_new_partition(
                spec, settings, engine, model, version, part, dag_run_id=dag_run_id, scored_at=scored_at, times=times
            )
        if written is not None:
            rows, part_unseen = written
            unseen.update(part_unseen)
            uris.append(settings.lake.uri_of(key))
            total += rows
            versions.append(version)
            continue
        scored = score_partition(spec, settings, model.booster, model.signature, version, part, times)
        previous = None if served is None else served.partition
        if served is not None:
            rewritten = rewritten_rows(spec, served.scores, scored)
            if len(rewritten) and not rescore_with:
                raise RecordConflictError(
                    f"{spec.name}: scoring {part.isoformat()} again would change or remove {len(rewritten)} "
                    f"prediction(s) logged by v{served.version} (its inputs changed since), e.g. "
                    f"{rewritten.head(3).to_dict('records')}; the log keeps what served. To replace them, trigger "
                    f"{spec.name}__score for this interval with the param rescore_with ('champion' or a version), "
                    f"or run `pipelines run {spec.name}__score --start ... --end ... --param rescore_with=champion`: "
                    "the replaced rows are kept in predictions_history"
                )
            if len(rewritten) and previous is not None:
                # The earlier scored partition stays readable: its manifest moves to the history zone
                # (a partition of the earlier layout keeps its data file beside the manifest it had).
                publish(
                    settings.lake,
                    f"{spec.name}/scored_history/{partition_path(part, spec.partition)}/{previous.sha256}",
                    {"data": f"{key}/{DATA_FILE}", **previous.manifest},
                )
                log.warning(
                    "%s: %s re-scored with v%s by explicit choice; %d prediction(s) of v%s moved to predictions_history",
                    spec.name,
                    part.isoformat(),
                    version,
                    len(rewritten),
                    served.version,
                )
        contract = contract_of(model.booster)
        part_unseen = unseen_category_counts(scored, contract)
        unseen.update(part_unseen)
        # The object first, the log next, the partition last: the lake never shows what the log lacks.
        with times.step("lake"):
            staged = scored_object(chunks_of(scored)).stage(
                settings.lake, spec.name, scored_manifest(spec, contract, version, part, dag_run_id, part_unseen)
            )
        with times.step("log"):
            deleted += write_predictions(
                engine, spec, part, prediction_rows(spec, scored, dag_run_id, scored_at), dag_run_id
            )
        with times.step("lake"):
            if previous is None or previous.sha256 != staged["sha256"]:  # a re-run of the same scores changes nothing
                publish(settings.lake, key, staged)
        if served is not None and served.damaged:
            log.warning(
                "%s: repaired the scored %s %s: %s; rewritten from rescoring it with v%s, which gave the %d "
                "logged prediction(s) again",
                spec.name,
                spec.partition,
                part.isoformat(),
                served.damaged,
                version,
                len(scored),
            )
        uris.append(settings.lake.uri_of(key))
        total += len(scored)
        versions.append(version)
    if any(unseen.values()):
        log.warning("%s: categories unseen in training (scored as missing): %s", spec.name, unseen)
    if deleted:
        log.warning(
            "%s: %d logged prediction(s) no longer in the source moved to predictions_history", spec.name, deleted
        )
    return ScoreResult(",".join(dict.fromkeys(versions)), total, dict(unseen), uris, deleted, times.rounded())


def replay_logged_inputs(spec: ModelSpec, settings: Settings, version: str, logged: pd.DataFrame) -> pd.DataFrame:
    """Score logged inputs with `version`: what it would have said in production.

    Columns: entity_id, as_of, logged_version, logged_score, score (and, multiclass, predicted_class and
    class_probabilities).
    """
    multiclass = list(MULTICLASS_COLUMNS) if spec.task.has_classes else []
    columns = ["entity_id", "as_of", "logged_version", "logged_score", "score", *multiclass]
    if logged.empty:
        return pd.DataFrame(columns=columns)
    booster = load_booster(settings, spec.name, version)
    contract = contract_of(booster)
    return pd.DataFrame(
        {
            "entity_id": logged[spec.entity_key].astype("string"),
            "as_of": logged[spec.timestamp],
            "logged_version": logged["model_version"].astype("string"),
            "logged_score": logged["score"],
            **prediction_columns(contract, predict_chunked(booster, contract, logged)),
        }
    )
