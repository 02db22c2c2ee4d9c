"""Stage 6: join logged predictions with the labels known at the run's end; metrics per cohort x version x slice.

A cohort is the UTC date of `as_of`, and a backtest computes whole cohorts only: every prediction
of each day from the one `lookback_days` before its end, with the labels that had arrived before
that end (intervals are half-open). Each row says how many of the cohort's predictions had a label
(`n` of `predictions`) and whether all of them were past their label delay (`complete`). The table
is append-only by `labels_as_of`, and readers take per cohort the row computed from the most
labelled predictions: runs in any order, and re-runs, leave the same table and the same answer.

The challenger (when it is not the champion) is replayed on the logged inputs of the last
`backtest.replay_intervals` matured hours after its training data ends, so it is judged on
production traffic it never saw; its rows sit next to the serving model's in `backtest_metrics`
with scored_by = 'replay'.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from pipelines.core.features import parse_probabilities
from pipelines.core.intervals import PANDAS_FREQ, interval_key
from pipelines.core.metrics import TASK_METRICS, task_metrics
from pipelines.core.spec import ModelSpec
from pipelines.core.tasks import Task
from pipelines.stages.labels import labels_known_at
from pipelines.storage import bulk, database, tables
from pipelines.storage.settings import Settings

log = logging.getLogger(__name__)

ALL = "ALL"  # slice_column and slice_value of a whole-cohort row
LOGGED, REPLAY = "logged", "replay"
PROBABILITY_PREFIX = "_p"  # multiclass: the class probabilities, parsed once, as columns _p0, _p1, ...


@dataclass(frozen=True)
class BacktestResult:
    cohorts: int
    rows: int
    metrics: list[dict[str, Any]]
    summary: dict[str, float]
    challenger_version: str | None
    replayed_rows: int
    plot_uri: str
    mlflow_run_id: str


def cohort_window(spec: ModelSpec, end: datetime) -> tuple[datetime, datetime]:
    """The as_of range a backtest up to `end` reads: whole UTC days, from the day `lookback_days` before `end`."""
    since = (end - timedelta(days=spec.backtest.lookback_days)).astimezone(UTC)
    return since.replace(hour=0, minute=0, second=0, microsecond=0), end


def cohort_predictions(spec: ModelSpec, engine: Engine, end: datetime, since: datetime | None = None) -> pd.DataFrame:
    """Every logged prediction of the window's cohorts (or from `since`), with its label as known at `end`
    (missing: none yet)."""
    p = tables.predictions
    since = since or cohort_window(spec, end)[0]
    database.refresh_statistics(engine, tables.predictions, tables.labels)
    columns = [p.c.entity_id, p.c.as_of, p.c.model_version, p.c.score]
    if spec.task.has_classes:
        columns.append(p.c.class_probabilities)
    query = select(*columns).where(p.c.model_name == spec.name, p.c.as_of >= since, p.c.as_of < end)
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).all(), columns=[c.name for c in columns])
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    frame["model_version"] = frame["model_version"].astype(str)
    # Two indexed range reads joined here: SQLite plans an outer join with the grouped labels badly.
    known = labels_known_at(engine, spec, since, end, end)  # each label as it was known at `end`
    frame = frame.merge(known, on=["entity_id", "as_of"], how="left", validate="one_to_one")
    # One row order whatever the database returns: the metrics' float sums are then bit-for-bit reproducible.
    frame = frame.sort_values(["as_of", "entity_id"], ignore_index=True)
    if not spec.task.has_classes:
        frame["label"] = pd.to_numeric(frame["label"], errors="coerce")  # no label yet: NaN
    return with_probability_columns(spec, frame)


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["label"].notna()]


def with_probability_columns(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Multiclass: the logged class probabilities (JSON) parsed once into columns, in the spec's class order."""
    if not spec.task.has_classes:
        return frame
    classes = spec.label.classes or []
    matrix = parse_probabilities(frame.pop("class_probabilities"), classes)
    return frame.assign(**{f"{PROBABILITY_PREFIX}{k}": matrix[:, k] for k in range(len(classes))})


def logged_inputs_of(spec: ModelSpec, settings: Settings, frame: pd.DataFrame) -> pd.DataFrame:
    """The logged inputs (the lake's scored partitions) of the partitions of these predictions, read once."""
    from pipelines.stages.prediction_log import read_logged_inputs

    parts = [p.to_pydatetime() for p in sorted(frame["as_of"].dt.floor(PANDAS_FREQ[spec.partition]).unique())]
    logged = read_logged_inputs(spec, settings, parts)
    if logged.partitions_missing:
        log.warning(
            "%s: %d scored partition(s) missing from the lake: their rows count in ALL only and are not replayed",
            spec.name,
            len(logged.partitions_missing),
        )
    return logged.frame


def with_slice_values(spec: ModelSpec, frame: pd.DataFrame, logged: pd.DataFrame) -> pd.DataFrame:
    """Add each slice column's logged value to the predictions."""
    if not spec.backtest.slices:
        return frame
    if logged.empty:
        return frame.assign(**{column: pd.NA for column in spec.backtest.slices})
    inputs = logged[[spec.entity_key, spec.timestamp, *spec.backtest.slices]].rename(
        columns={spec.entity_key: "entity_id", spec.timestamp: "as_of"}
    )
    inputs["entity_id"] = inputs["entity_id"].astype(str)
    return frame.merge(inputs, on=["entity_id", "as_of"], how="left", validate="one_to_one")


def _metrics(spec: ModelSpec, group: pd.DataFrame) -> dict[str, Any]:
    """One row of backtest_metrics: the task's metrics on these labelled predictions."""
    scores = group["score"].to_numpy(dtype=float)
    row: dict[str, Any] = {"n": len(group), "mean_score": float(scores.mean())}
    if spec.task.has_classes:
        classes = spec.label.classes or []
        probabilities = group[[f"{PROBABILITY_PREFIX}{k}" for k in range(len(classes))]].to_numpy(dtype=float)
        labels = group["label"].to_numpy(dtype=object)
        values = task_metrics(spec.task, labels, probabilities, classes, f"{spec.name} backtest, stored labels")
        return {**row, **values, "class_recall": json.dumps(values["class_recall"])}
    labels = group["label"].to_numpy(dtype=float)
    values = task_metrics(spec.task, labels, scores)
    if spec.task is Task.BINARY:
        return {**row, **values, "positives": int(labels.sum())}
    return {**row, **values, "mean_label": float(labels.mean())}


def cohort_complete(spec: ModelSpec, cohort: str, end: datetime) -> bool:
    """Every prediction of the day was past its label delay at `end`: no label of it is still due."""
    day_end = datetime.fromisoformat(cohort).replace(tzinfo=UTC) + timedelta(days=1)
    return day_end + timedelta(hours=spec.label.delay_hours) <= end


def _row(spec: ModelSpec, base: dict[str, Any], part: pd.DataFrame, column: str, value: str) -> dict[str, Any]:
    counted = len(part) if base["scored_by"] == LOGGED else None
    return {
        **base,
        "slice_column": column,
        "slice_value": value,
        "predictions": counted,
        **_metrics(spec, labelled(part)),
    }


def cohort_metrics(
    spec: ModelSpec, frame: pd.DataFrame, slices: list[str], scored_by: str, end: datetime
) -> list[dict[str, Any]]:
    """One row per cohort x model version for the whole cohort, and one per value of each slice column,
    over the labelled predictions; `predictions` counts them all (replayed rows are labelled ones only)."""
    rows: list[dict[str, Any]] = []
    if frame.empty:
        return rows
    cohorts = frame["as_of"].dt.strftime("%Y-%m-%d")
    for (cohort, version), group in frame.groupby([cohorts, "model_version"]):
        if labelled(group).empty:
            continue  # no label known yet: nothing to measure, and no row to outrank a later one
        base = {
            "cohort": cohort,
            "model_version": str(version),
            "scored_by": scored_by,
            "complete": cohort_complete(spec, str(cohort), end),
        }
        rows.append(_row(spec, base, group, ALL, ALL))
        for column in slices:
            for value, part in group.dropna(subset=[column]).groupby(column):
                if not labelled(part).empty:
                    rows.append(_row(spec, base, part, column, str(value)))
    return rows


def replay_challenger(
    spec: ModelSpec, settings: Settings, frame: pd.DataFrame, logged: pd.DataFrame, challenger: str, end: datetime
) -> pd.DataFrame:
    """The challenger's scores on the logged inputs of the last K matured partitions new to it, with their labels.

    The replayed scores are kept in the lake (`<model>/replay/v<version>/...`) for the gate and for audit.
    """
    from pipelines.stages.score import replay_logged_inputs
    from pipelines.storage.lake import write_partition
    from pipelines.storage.registry import fresh_from

    # Only rows the challenger was not fitted on: replaying its own training rows would flatter it.
    since = fresh_from(settings, spec.name, challenger)
    if since is not None:
        frame = frame[frame["as_of"] >= pd.Timestamp(since)]
    freq = PANDAS_FREQ[spec.partition]
    parts = sorted(frame["as_of"].dt.floor(freq).unique())[-spec.backtest.replay_intervals :]
    if not parts:
        log.warning(
            "%s: no matured %s is newer than challenger v%s's training data yet", spec.name, spec.partition, challenger
        )
        return frame.iloc[0:0].assign(model_version=challenger)
    chosen = logged[logged[spec.timestamp].dt.floor(freq).isin(parts)] if not logged.empty else logged
    replayed = replay_logged_inputs(spec, settings, challenger, chosen)
    scores = with_probability_columns(spec, replayed.assign(entity_id=replayed["entity_id"].astype(str)))
    said = ["score", *(c for c in scores.columns if c.startswith(PROBABILITY_PREFIX))]
    labelled = frame.drop(columns=["model_version", *said]).merge(
        scores[["entity_id", "as_of", *said]], on=["entity_id", "as_of"], how="inner", validate="one_to_one"
    )
    labelled["model_version"] = challenger
    write_partition(
        settings.lake,
        f"{spec.name}/replay/v{challenger}/{interval_key(end - timedelta(days=spec.backtest.lookback_days), end)}",
        replayed,
        {"model": spec.name, "model_version": challenger, "partitions": [p.isoformat() for p in parts]},
    )
    return labelled


def replay_evidence(
    spec: ModelSpec, settings: Settings, engine: Engine, challenger: str, champion: str, end: datetime
) -> pd.DataFrame:
    """The rows champion `champion` scored in production of every cohort whose labels were all due by `end`
    and whose every labelled row the challenger replayed (in any of its replay partitions), with the
    label known at `end`. The champion's
    score is `score` (multiclass `_p<k>`), the challenger's `score_challenger` (`_p<k>_challenger`)."""
    from pipelines.storage.lake import MANIFEST_FILE, read_partition

    prefix = f"{spec.name}/replay/v{challenger}/"
    keys = [k.rsplit("/", 1)[0] for k in settings.lake.keys(prefix) if k.endswith(f"/{MANIFEST_FILE}")]
    if not keys:
        return pd.DataFrame()
    replayed = pd.concat([read_partition(settings.lake, key)[0] for key in keys], ignore_index=True)
    replayed["as_of"] = pd.to_datetime(replayed["as_of"], utc=True)
    # A row replayed by several runs has the same score each time (replays are bit-for-bit).
    replayed = replayed.drop_duplicates(["entity_id", "as_of"]).assign(entity_id=lambda f: f["entity_id"].astype(str))
    replayed = replayed[replayed["logged_version"].astype(str) == champion]
    if replayed.empty:
        return pd.DataFrame()
    first_day = replayed["as_of"].min().floor("D").to_pydatetime()
    served = labelled(cohort_predictions(spec, engine, end, since=first_day))
    served = served[served["model_version"] == champion]
    whole = [c for c in served["as_of"].dt.strftime("%Y-%m-%d").unique() if cohort_complete(spec, c, end)]
    served = served[served["as_of"].dt.strftime("%Y-%m-%d").isin(whole)]
    said = ["score", *(c for c in served.columns if c.startswith(PROBABILITY_PREFIX))]
    challenger_scores = with_probability_columns(spec, replayed)[["entity_id", "as_of", *said]]
    evidence = served.merge(
        challenger_scores, on=["entity_id", "as_of"], how="left", validate="one_to_one", suffixes=("", "_challenger")
    )
    evidence["cohort"] = evidence["as_of"].dt.strftime("%Y-%m-%d")
    # Whole cohorts only: a day the challenger replayed in part would be judged on a biased subset.
    replayed_whole = evidence.groupby("cohort")["score_challenger"].transform(lambda s: bool(s.notna().all()))
    evidence = evidence[replayed_whole.astype(bool)]
    return evidence.sort_values(["as_of", "entity_id"], ignore_index=True)


def plot_key(model_name: str, end: datetime) -> str:
    """Where in the lake the plot of a backtest up to `end` lives."""
    return f"{model_name}/reports/backtest/{end:%Y-%m-%dT%H%M}.png"


def plot_metric(spec: ModelSpec) -> str:
    """The metric the backtest plot shows: the gate's when the backtest stores it, else the task's headline."""
    return spec.gate.metric if spec.gate.metric in TASK_METRICS[spec.task] else TASK_METRICS[spec.task][0]


def plot_png(spec: ModelSpec, metrics: list[dict[str, Any]], end: datetime) -> bytes:
    """The task's metric per cohort for each model version (solid: logged, dashed: replayed), whole cohorts only."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    frame = pd.DataFrame([m for m in metrics if m["slice_column"] == ALL])
    metric = plot_metric(spec)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    if not frame.empty:
        for (version, scored_by), line in frame.groupby(["model_version", "scored_by"]):
            line = line.sort_values("cohort")
            axis.plot(
                line["cohort"],
                line[metric],
                marker="o",
                linestyle="--" if scored_by == REPLAY else "-",
                label=f"v{version} ({scored_by})",
            )
        axis.legend()
    else:
        axis.text(0.5, 0.5, "no matured predictions yet", ha="center", va="center", transform=axis.transAxes)
    axis.set(
        title=f"{spec.name}: backtest {metric} per cohort, labels known at {end:%Y-%m-%d %H:%M} UTC", ylabel=metric
    )
    axis.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def summary_metrics(spec: ModelSpec, frame: pd.DataFrame, replayed: pd.DataFrame) -> dict[str, float]:
    """Whole-lookback metrics per version, and the serving model on exactly the rows the challenger replayed."""
    summary: dict[str, float] = {}
    parts = [(LOGGED, frame), (REPLAY, replayed)]
    if not replayed.empty:
        same_rows = frame.merge(replayed[["entity_id", "as_of"]], on=["entity_id", "as_of"])
        parts.append((f"{LOGGED}_on_replayed_rows", same_rows))
    for scored_by, part in parts:
        for version, group in part.groupby("model_version") if not part.empty else []:
            for name, value in _metrics(spec, group).items():
                if isinstance(value, int | float):  # not an undefined metric, nor the class recalls' JSON
                    summary[f"{scored_by}.v{version}.{name}"] = float(value)
    return summary


def log_to_mlflow(
    spec: ModelSpec,
    settings: Settings,
    summary: dict[str, float],
    metrics: list[dict[str, Any]],
    png: bytes,
    *,
    end: datetime,
    dag_run_id: str,
) -> str:
    """One MLflow run per backtest DAG run (a re-run reuses it), in the model's experiment."""
    import tempfile
    from pathlib import Path

    import mlflow

    from pipelines.storage.tracking import experiment_id

    experiment = experiment_id(settings, spec.name)
    found = mlflow.search_runs(
        [experiment],
        filter_string=f"tags.backtest_dag_run_id = '{dag_run_id}'",
        output_format="list",
    )
    with mlflow.start_run(
        run_id=found[0].info.run_id if found else None,
        experiment_id=None if found else experiment,
        run_name=None if found else f"backtest {end:%Y-%m-%dT%H:%M}",
        tags={"kind": "backtest", "backtest_dag_run_id": dag_run_id, "labels_as_of": end.isoformat()},
    ) as run:
        mlflow.log_metrics(summary)
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "backtest.png").write_bytes(png)
            (Path(scratch) / "backtest_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
            mlflow.log_artifacts(scratch, artifact_path="backtest")
        return str(run.info.run_id)


def backtest(
    spec: ModelSpec,
    settings: Settings,
    engine: Engine,
    end: datetime,
    *,
    dag_run_id: str,
    challenger: str | None = None,
) -> BacktestResult:
    frame = cohort_predictions(spec, engine, end)
    needs_inputs = (spec.backtest.slices or challenger is not None) and not labelled(frame).empty
    logged = logged_inputs_of(spec, settings, frame) if needs_inputs else pd.DataFrame()
    frame = with_slice_values(spec, frame, logged)
    metrics = cohort_metrics(spec, frame, spec.backtest.slices, LOGGED, end)
    frame = labelled(frame)
    replayed = pd.DataFrame()
    if challenger is not None and not frame.empty:
        replayed = replay_challenger(spec, settings, frame, logged, challenger, end)
        metrics += cohort_metrics(spec, replayed, spec.backtest.slices, REPLAY, end)
    bulk.merge_frame(
        engine,
        tables.backtest_metrics,
        pd.DataFrame(
            [{**row, "model_name": spec.name, "labels_as_of": end, "dag_run_id": dag_run_id} for row in metrics],
            columns=[c.name for c in tables.backtest_metrics.columns],
        ),
        key=["model_name", "cohort", "model_version", "scored_by", "slice_column", "slice_value", "labels_as_of"],
    )
    png = plot_png(spec, metrics, end)
    settings.lake.put(plot_key(spec.name, end), png)
    summary = summary_metrics(spec, frame, replayed)
    run_id = log_to_mlflow(spec, settings, summary, metrics, png, end=end, dag_run_id=dag_run_id)
    return BacktestResult(
        cohorts=len({m["cohort"] for m in metrics}),
        rows=len(frame),
        metrics=metrics,
        summary=summary,
        challenger_version=challenger,
        replayed_rows=len(replayed),
        plot_uri=settings.lake.uri_of(plot_key(spec.name, end)),
        mlflow_run_id=run_id,
    )
