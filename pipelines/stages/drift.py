"""Stage 7: Evidently drift report for a scored interval against the spec's reference.

The reference is the sample stored with the serving model's MLflow run at training time, or
published raw data of a fixed window or of the same period earlier (`drift.reference`), for data
with seasons. The current data is the scored inputs kept in the lake, sampled to
`drift.max_current_rows` because the preset's cost grows faster than linearly with rows. Which
features are tested, and how, is the spec's `drift.columns`, `drift.exclude` and `drift.tests`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from pipelines.core.errors import PermanentError
from pipelines.core.features import contract_of, predict, prediction_columns
from pipelines.core.intervals import PartitionUnit, interval_key, partitions_between
from pipelines.core.spec import P_VALUE_DRIFT_TESTS, DriftSpec, ModelSpec
from pipelines.stages.prediction_log import read_scored
from pipelines.storage import bulk, tables
from pipelines.storage.lake import MANIFEST_FILE, partition_key, read_partition
from pipelines.storage.registry import load_booster
from pipelines.storage.settings import Settings
from pipelines.storage.tracking import download_run_artifact

log = logging.getLogger(__name__)

# The model's outputs, compared like columns: prediction drift. The score (a probability, a regression
# value, or the top class's probability) and, for multiclass, the predicted class: the class mix.
PREDICTION_COLUMN = "model_score"
PREDICTED_CLASS_COLUMN = "model_class"
PREDICTION_COLUMNS = (PREDICTION_COLUMN, PREDICTED_CLASS_COLUMN)


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    stattest: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    model_version: str
    reference_rows: int
    current_rows: int
    columns: list[ColumnDrift]
    report_path: str
    reference: str  # what the window was compared with, in words

    @property
    def features(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.column not in PREDICTION_COLUMNS]

    @property
    def drifted_columns(self) -> list[str]:
        """Drifted feature columns (the prediction's own drift is reported apart)."""
        return [c.column for c in self.features if c.drifted]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_columns) / len(self.features) if self.features else 0.0

    @property
    def prediction_drift(self) -> bool | None:
        """Did the model's output drift (its score, or for multiclass its class mix)."""
        found = [c.drifted for c in self.columns if c.column in PREDICTION_COLUMNS]
        return any(found) if found else None


def column_results(snapshot: dict[str, Any]) -> list[ColumnDrift]:
    """Per-column verdicts from the preset's ValueDrift metrics.

    P-value tests flag drift below the threshold; distances (Wasserstein, Jensen-Shannon, PSI) at
    or above it, as each Evidently test does. A test Evidently picked is named by its display name
    ("K-S p_value"), one the spec chose by its own name ("mannw"), which says nothing of its kind.
    """
    results = []
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        method, threshold, value = str(config["method"]), float(config["threshold"]), float(metric["value"])
        p_value = method in P_VALUE_DRIFT_TESTS or "p_value" in method
        drifted = value < threshold if p_value else value >= threshold
        results.append(ColumnDrift(config["column"], method, value, threshold, drifted))
    return results


@dataclass(frozen=True)
class ColumnTest:
    method: str
    threshold: float


MIN_CALIBRATION_PARTITIONS = 5  # fewer reference partitions than this say nothing of their spread
MIN_PARTITION_ROWS = 30  # a partition with fewer rows is too noisy to compare
# Three times the median partition's distance from the rest: about the 95th percentile of a stationary
# reference's partitions (a half-normal's is 2.9 times its median), but a few partitions after a change
# late in the reference move the median little, where they would set the 95th percentile.
CALIBRATION_FACTOR = 3.0
MAX_CALIBRATION_PARTITIONS = 60  # each costs one test per column
MAX_REST_ROWS = 5_000


def column_tests(spec: DriftSpec, numeric: list[str], categorical: list[str]) -> dict[str, ColumnTest]:
    """Each column's test and stated threshold: the spec's own choice for it, else the kind's default."""
    tests = {}
    for column in [*numeric, *categorical]:
        kind_method, kind_threshold = (
            (spec.num_method, spec.num_threshold) if column in numeric else (spec.cat_method, spec.cat_threshold)
        )
        chosen = spec.tests.get(column)
        method = chosen.method if chosen and chosen.method else kind_method
        # A threshold stated for another test means nothing to this one: a chosen method keeps its default.
        default = kind_threshold if method == kind_method else stattest_default_threshold(method, column in numeric)
        tests[column] = ColumnTest(method, chosen.threshold if chosen and chosen.threshold is not None else default)
    return tests


def _stattest(method: str, numeric: bool) -> Any:
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Numerical if numeric else ColumnType.Categorical
    return get_registered_stattest(method, kind), kind


def stattest_default_threshold(method: str, numeric: bool) -> float:
    return float(_stattest(method, numeric)[0].default_threshold)


def calibrate(
    reference: pd.DataFrame,
    tests: dict[str, ColumnTest],
    numeric: list[str],
    timestamp: str,
    unit: PartitionUnit,
    fixed: set[str],
) -> tuple[dict[str, ColumnTest], str]:
    """Raise each distance's threshold to the spread of the reference's own partitions, and say how.

    Each partition (a day or an hour of the reference) is compared with the rest of the reference by
    the column's own test; the threshold becomes three times their median (CALIBRATION_FACTOR) when
    that is higher. A window then drifts only when it is further from the reference than the reference's
    own days usually are: daily seasonality and values repeated within a day (hourly weather across
    a day's flights) are not drift, a shift beyond them is. Columns in `fixed` (a threshold the spec
    stated for them) and p-value tests are left as stated.
    """
    if timestamp not in reference.columns:
        return tests, "stated thresholds (the reference has no timestamps to calibrate them on)"
    stamps = pd.to_datetime(reference[timestamp], utc=True)
    # Partitions as codes (-1: no time), in time order.
    codes, _ = pd.factorize(stamps.dt.floor("D" if unit == "day" else "h"), sort=True)
    sizes = np.bincount(codes[codes >= 0])
    usable = [int(code) for code in np.flatnonzero(sizes >= MIN_PARTITION_ROWS)]
    sampled = ""
    if len(usable) > MAX_CALIBRATION_PARTITIONS:  # a month of hours: a seeded sample of them is enough
        chosen = np.random.default_rng(0).choice(len(usable), MAX_CALIBRATION_PARTITIONS, replace=False)
        sampled = f" (a seeded {MAX_CALIBRATION_PARTITIONS} of {len(usable)})"
        usable = [usable[i] for i in sorted(chosen)]
    if len(usable) < MIN_CALIBRATION_PARTITIONS:
        return tests, (
            f"stated thresholds (the reference has {len(usable)} {unit}(s) of at least {MIN_PARTITION_ROWS} rows; "
            f"calibrating needs {MIN_CALIBRATION_PARTITIONS})"
        )
    # Each partition is compared with at most MAX_REST_ROWS of the rest, drawn once (seeded): the rest
    # is a sample already, and a smaller one keeps an hourly model's calibration near a second.
    order = np.random.default_rng(0).permutation(len(reference))
    codes, shuffled = codes[order], reference.iloc[order]
    halfway = (int(codes.max()) + 1) // 2  # codes run in time order: the halves of the reference's span
    calibrated, changed = dict(tests), []
    for column, test in tests.items():
        if column in fixed or column not in reference.columns or test.method in P_VALUE_DRIFT_TESTS:
            continue
        stattest, kind = _stattest(test.method, column in numeric)
        values = shuffled[column] if column in numeric else shuffled[column].astype("string").astype(object)
        distances = []
        for code in usable:
            inside = codes == code
            here, rest = values[inside].dropna(), values[~inside].dropna().iloc[:MAX_REST_ROWS]
            if len(here) and len(rest):
                distances.append(float(stattest(rest, here, kind, test.threshold).drift_score))
        if len(distances) < MIN_CALIBRATION_PARTITIONS:
            continue
        spread = CALIBRATION_FACTOR * float(np.median(distances))
        # A lasting change inside the reference (it straddles a shift) also spreads its partitions,
        # and calibrating on that spread would hide the shift from every later window. A stationary
        # reference's halves in time each average many partitions, so they lie far closer together
        # than single partitions lie from the rest; halves at least half that spread apart mean a change.
        first, second = (values[(codes >= 0) & (codes < halfway)], values[codes >= halfway])
        first, second = first.dropna(), second.dropna()
        if len(first) and len(second):
            between_halves = float(stattest(first, second, kind, test.threshold).drift_score)
            if between_halves >= max(test.threshold, spread / 2):
                changed.append(column)
                continue
        calibrated[column] = ColumnTest(test.method, round(max(test.threshold, spread), 6))
    how = f"thresholds calibrated on {len(usable)} {unit}s of the reference{sampled}"
    if changed:
        how += f"; stated for {', '.join(changed)}: the reference's two halves differ (a change inside it)"
    return calibrated, how


def run_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    spec: DriftSpec,
    tests: dict[str, ColumnTest] | None = None,
    html: bool = True,
) -> tuple[list[ColumnDrift], bytes]:
    """Per-column drift results and the report's HTML (empty when `html` is False).

    Every column is judged by its test in `tests` (default: `column_tests`). The preset covers the
    features only, so the report's headline ("k of n columns drifted") is the count the log,
    `drift_reports` and status give; the model's score, when present, is judged by a metric of its
    own (prediction drift) next to it.
    """
    from evidently import DataDefinition, Dataset, Report  # slow import: only inside the task
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    tests = tests or column_tests(spec, numeric, categorical)
    features = [c for c in [*numeric, *categorical] if c not in PREDICTION_COLUMNS]
    preset = DataDriftPreset(
        columns=features,
        drift_share=spec.drift_share,
        per_column_method={c: tests[c].method for c in features},
        per_column_threshold={c: tests[c].threshold for c in features},
    )
    metrics: list[Any] = [preset]
    metrics += [
        ValueDrift(column=c, method=tests[c].method, threshold=tests[c].threshold)
        for c in [*numeric, *categorical]
        if c in PREDICTION_COLUMNS
    ]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = Report(metrics).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    if not html:
        return column_results(snapshot.dict()), b""
    with tempfile.TemporaryDirectory() as scratch:
        html_path = Path(scratch) / "report.html"
        snapshot.save_html(str(html_path))
        page = html_path.read_bytes()
    return column_results(snapshot.dict()), page


def model_run_id(settings: Settings, model_name: str, version: str) -> str:
    from mlflow import MlflowClient

    from pipelines.storage.tracking import use_tracking

    use_tracking(settings)
    return str(MlflowClient().get_model_version(model_name, version).run_id)


def seeded_sample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """A seeded sample of at most max_rows: the report's time grows faster than linearly with rows."""
    return frame.sample(n=max_rows, random_state=0) if len(frame) > max_rows else frame


def published_window(spec: ModelSpec, settings: Settings, start: datetime, end: datetime) -> tuple[pd.DataFrame, int]:
    """A seeded sample of the published raw data of [start, end), and how many of its partitions
    the lake lacks. Each partition is sampled as it is read, so a month-long window of large
    partitions never sits in memory whole."""
    frames, missing = [], 0
    for part in partitions_between(start, end, spec.partition):
        key = partition_key(spec.name, "raw", part, spec.partition)
        if settings.lake.exists(f"{key}/{MANIFEST_FILE}"):
            frames.append(seeded_sample(read_partition(settings.lake, key)[0], spec.drift.reference_rows))
        else:
            missing += 1
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return seeded_sample(frame, spec.drift.reference_rows).reset_index(drop=True), missing


def reference_sample(
    spec: ModelSpec, settings: Settings, version: str, start: datetime, end: datetime
) -> tuple[pd.DataFrame, str]:
    """The reference frame for the window [start, end) and what it is, in words."""
    chosen = spec.drift.reference
    training = f"the training sample of v{version}"
    if chosen.kind != "training":
        if chosen.kind == "window":
            assert chosen.start is not None and chosen.end is not None  # the spec checks it
            window = chosen.start, chosen.end
        else:
            offset = timedelta(days=chosen.offset_days or 0)
            window = start - offset, end - offset
        period = f"[{window[0].isoformat()}, {window[1].isoformat()})"
        frame, missing = published_window(spec, settings, *window)
        if not frame.empty:
            described = f"published data of {period}" + (f" ({missing} partition(s) missing)" if missing else "")
            return frame, described
        if chosen.kind == "window":
            raise PermanentError(
                f"{spec.name}: drift.reference window {period} has no published raw data in the lake "
                f"({missing} partition(s) missing): ingest it with the score DAG, or choose another window"
            )
        log.warning("%s: the same period %s has no published data yet: compared with %s", spec.name, period, training)
        training = f"{training} (the same period {period} has no data)"
    frame = download_run_artifact(
        settings, model_run_id(settings, spec.name, version), "reference/reference.parquet", f"{spec.name} v{version}"
    )
    return frame, training


def _as_categorical_text(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in columns:
        frame[column] = frame[column].astype("string").astype(object)
    return frame


def recorded_summary(engine: Engine, model_name: str, start: datetime, end: datetime) -> DriftSummary | None:
    """The report already recorded for this window, read back (None if it was never monitored)."""
    d, m = tables.drift_reports, tables.drift_metrics
    window = (d.c.model_name == model_name, d.c.interval_start == start, d.c.interval_end == end)
    with engine.connect() as connection:
        report = connection.execute(select(d).where(*window)).mappings().first()
        if report is None:
            return None
        rows = connection.execute(
            select(m).where(m.c.model_name == model_name, m.c.interval_start == start, m.c.interval_end == end)
        ).mappings()
        columns = [
            ColumnDrift(r["column_name"], r["stattest"], r["drift_score"], r["threshold"], r["drifted"]) for r in rows
        ]
    return DriftSummary(
        report["model_version"],
        report["reference_rows"],
        report["current_rows"],
        columns,
        report["report_path"],
        report["reference"] or "the training sample",  # reports from before the column was added
    )


def record_summary(
    spec: ModelSpec, engine: Engine, start: datetime, end: datetime, *, summary: DriftSummary, dag_run_id: str
) -> None:
    version = summary.model_version
    interval = {"model_name": spec.name, "interval_start": start, "interval_end": end}
    # The report and its per-column results are one record: written together or not at all.
    with engine.begin() as connection:
        bulk.upsert(
            connection,
            tables.drift_reports,
            [
                {
                    **interval,
                    "model_version": version,
                    "reference_rows": summary.reference_rows,
                    "current_rows": summary.current_rows,
                    "columns": len(summary.features),
                    "drifted_columns": len(summary.drifted_columns),
                    "drift_share": summary.drift_share,
                    "dataset_drift": summary.drift_share >= spec.drift.drift_share,
                    "drifted_column_names": json.dumps(summary.drifted_columns),
                    "prediction_drift": summary.prediction_drift,
                    "report_path": summary.report_path,
                    "reference": summary.reference,
                    "dag_run_id": dag_run_id,
                    "created_at": datetime.now(UTC),
                }
            ],
            key=["model_name", "interval_start", "interval_end"],
        )
        bulk.upsert(
            connection,
            tables.drift_metrics,
            [
                {
                    **interval,
                    "column_name": c.column,
                    "stattest": c.stattest,
                    "drift_score": c.score,
                    "threshold": c.threshold,
                    "drifted": c.drifted,
                }
                for c in summary.columns
            ],
            key=["model_name", "interval_start", "interval_end", "column_name"],
        )


def monitor_interval(
    spec: ModelSpec, settings: Settings, engine: Engine, start: datetime, end: datetime, *, dag_run_id: str
) -> DriftSummary:
    """The drift report of a scored window; one already recorded is read back, never recomputed over."""
    recorded = recorded_summary(engine, spec.name, start, end)
    if recorded is not None:
        return recorded
    current, versions = read_scored(spec, settings, start, end)
    if len(versions) != 1:
        raise PermanentError(
            f"{spec.name}: the hours of [{start.isoformat()}, {end.isoformat()}) were scored by versions {versions} "
            "(see their scored manifests); one report compares one version with its reference: monitor each hour alone"
        )
    version = versions[0]
    if current.empty:  # a quiet window: nothing to compare, and nothing drifted
        log.info("%s: no scored rows in [%s, %s): drift not measured", spec.name, start.isoformat(), end.isoformat())
        summary = DriftSummary(version, 0, 0, [], "", "nothing (no rows)")
        record_summary(spec, engine, start, end, summary=summary, dag_run_id=dag_run_id)
        return summary
    reference, described = reference_sample(spec, settings, version, start, end)
    # Prediction drift: what the model says on its reference sample against what it said in the interval.
    booster = load_booster(settings, spec.name, version)
    contract = contract_of(booster)
    said = prediction_columns(contract, predict(booster, contract, reference))
    reference[PREDICTION_COLUMN] = said["score"]
    outputs = {"score": PREDICTION_COLUMN}
    if "predicted_class" in said:
        reference[PREDICTED_CLASS_COLUMN] = said["predicted_class"]
        outputs["predicted_class"] = PREDICTED_CLASS_COLUMN
    current = current.rename(columns=outputs)
    current = seeded_sample(current, spec.drift.max_current_rows)

    # A column with no value on either side has no distribution to compare (Evidently refuses it).
    tested = spec.drift_columns
    empty = [c for c in tested if current[c].isna().all() or reference[c].isna().all()]
    if empty:
        log.warning(
            "%s: column(s) %s have no values in [%s, %s) or in the reference: not tested for drift",
            spec.name,
            empty,
            start.isoformat(),
            end.isoformat(),
        )
    numeric = [*(c for c in spec.features.numeric if c in tested and c not in empty), PREDICTION_COLUMN]
    categorical = [c for c in spec.features.categorical if c in tested and c not in empty]
    if PREDICTED_CLASS_COLUMN in reference.columns:
        categorical.append(PREDICTED_CLASS_COLUMN)
    columns = [*numeric, *categorical]
    tests = column_tests(spec.drift, numeric, categorical)
    how = "stated thresholds"
    if spec.drift.calibrate:
        fixed = {c for c, t in spec.drift.tests.items() if t.threshold is not None}
        tests, how = calibrate(reference, tests, numeric, spec.timestamp, spec.partition, fixed)
    report_key = f"{spec.name}/reports/drift/{interval_key(start, end)}.html"
    results, html = run_report(
        _as_categorical_text(reference[columns], categorical),
        _as_categorical_text(current[columns], categorical),
        numeric,
        categorical,
        spec.drift,
        tests,
    )
    settings.lake.put(report_key, html)
    described = f"{described}; {how}"
    summary = DriftSummary(version, len(reference), len(current), results, settings.lake.uri_of(report_key), described)

    record_summary(spec, engine, start, end, summary=summary, dag_run_id=dag_run_id)
    return summary
