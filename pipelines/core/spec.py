"""One model = one YAML spec, validated with pydantic. Errors name the file and the field."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipelines.core.errors import SpecError
from pipelines.core.intervals import floor_to_partition
from pipelines.core.project import Project, find_project, project_of_spec
from pipelines.core.tasks import METRICS, Task


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_location(value: str) -> str:
    """An s3:// URI, or a path relative to the source root (PIPELINES_SOURCE) that cannot climb out of it."""
    if value.startswith("s3://"):
        if not value.removeprefix("s3://").split("/", 1)[0]:
            raise ValueError(f"'{value}' names no bucket; expected s3://bucket/key")
        return value
    path = PurePosixPath(value)
    if not value.strip() or path.is_absolute() or PureWindowsPath(value).is_absolute() or ".." in path.parts:
        raise ValueError(
            f"'{value}' must be s3://bucket/key or a path relative to the source root (PIPELINES_SOURCE), without '..'"
        )
    return value


# Date directives a placeholder may use: each renders digits or a month/day name, never a path
# separator or a dot, so a rendered path cannot climb out of its root ({start:..} would render '..').
DATE_DIRECTIVES = frozenset("YymdHMSjUWGVuwaAbB")
# Text a placeholder may hold between directives: separators of dates, times and folders (no dot).
PLACEHOLDER_TEXT = re.compile(r"[-_=:T /]*")


def _check_placeholder(template: str, name: str, spec: str, conversion: str | None) -> None:
    where = f"'{template}': placeholder {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
    if conversion:
        raise ValueError(f"{where} converts the date (!{conversion}); give a date format, e.g. {{{name}:%Y-%m-%d}}")
    pieces = re.split(r"%(.)", spec)  # literal text, directive, literal text, ...
    directives, texts = pieces[1::2], pieces[0::2]
    bad = sorted({f"%{d}" for d in directives if d not in DATE_DIRECTIVES})
    if bad:
        raise ValueError(
            f"{where} uses {', '.join(bad)}; only the date directives "
            f"{' '.join('%' + d for d in sorted(DATE_DIRECTIVES))} are allowed"
        )
    if (spec and not directives) or any(not PLACEHOLDER_TEXT.fullmatch(text) for text in texts):
        raise ValueError(
            f"{where} is not a date format: a placeholder holds date directives (%Y %m %d %H %M ...) "
            "and the separators - _ = : T / or a space, nothing else"
        )


def template_fields(template: str) -> set[str]:
    """The placeholders of a path template ({start:%Y-%m-%d}); only start and end are known, and
    only with date directives."""
    parsed = [(name, spec or "", conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    fields = {name for name, _, _ in parsed if name is not None}
    unknown = sorted(fields - {"start", "end"})
    if unknown:
        # Attribute or item access ({start.year}, {x[0]}) is refused too: a template formats two datetimes.
        raise ValueError(f"'{template}' has placeholder(s) {unknown}; only {{start:...}} and {{end:...}} are known")
    for name, spec, conversion in parsed:
        if name is not None:
            _check_placeholder(template, name, spec, conversion)
    return fields


class FilesSource(_Strict):
    """CSV or parquet files, local (under PIPELINES_SOURCE) or on S3.

    `path` with a {start:...} placeholder names one file (or, ending in '/', one folder of files)
    per partition; without one it names a single file or folder holding every interval, whose rows
    are filtered by time."""

    # Its rows may span other intervals (one file holding them all): rows outside are left for theirs.
    selects_the_interval: ClassVar[bool] = False

    kind: Literal["files"]
    path: str = Field(description="e.g. sales/dt={start:%Y-%m-%d}/hour={start:%H}.csv or s3://bucket/sales.parquet")
    format: Literal["csv", "parquet"] | None = Field(default=None, description="Default: from the path's extension")
    when_missing: Literal["wait", "empty"] = Field(
        default="wait",
        description="A partition's missing file: wait (the source is not ready yet) or empty (a quiet "
        "partition: the producer writes no file when it has no rows)",
    )
    connection: str | None = Field(default=None, description="Airflow 'aws' connection for s3:// paths")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        template_fields(value)
        return _check_location(value)

    @model_validator(mode="after")
    def _known_format(self) -> FilesSource:
        if self.format is None:
            suffix = PurePosixPath(self.path.rstrip("/")).suffix.lower()
            if suffix not in {".csv", ".parquet"}:
                raise ValueError(f"'{self.path}': give format (csv or parquet); the extension does not say")
        return self

    @property
    def file_format(self) -> Literal["csv", "parquet"]:
        if self.format is not None:
            return self.format
        return "parquet" if self.path.rstrip("/").lower().endswith(".parquet") else "csv"

    @property
    def per_partition(self) -> bool:
        return any(name is not None for _, name, _, _ in string.Formatter().parse(self.path))


class SqlSource(_Strict):
    """Rows of a table or query reached through an Airflow connection (any SQLAlchemy database)."""

    # Its rows are the interval's by its own filter: a row outside the interval is the query's fault.
    selects_the_interval: ClassVar[bool] = True

    kind: Literal["sql"]
    connection: str = Field(description="Airflow connection id (postgres, mysql, sqlite, or any with a URI)")
    table: str | None = Field(default=None, description="Read the rows whose time column is in the interval")
    query: str | None = Field(
        default=None, description="A SELECT with the bound parameters :start and :end (UTC); never formatted in"
    )
    ready_query: str | None = Field(
        default=None,
        description="Optional: a SELECT with :start and :end whose first value is true once the interval is "
        "complete (e.g. a load watermark); without it the rows present at the interval's end are read",
    )
    chunk_rows: int = Field(default=100_000, ge=1000, description="Rows fetched per round trip")

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?", value):
            raise ValueError(f"'{value}' must be a table name, optionally schema.table")
        return value

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query")
        for name, text in (("query", self.query), ("ready_query", self.ready_query)):
            if text is not None and not {":start", ":end"} <= set(re.findall(r":[a-z_]+", text)):
                raise ValueError(f"{name} must use the bound parameters :start and :end (the interval, UTC)")
        return self


Source = Annotated[FilesSource | SqlSource, Field(discriminator="kind")]


class SourceSpec(_Strict):
    """Where the events and their labels are read, and how long to wait for an interval to be ready."""

    events: Source
    labels: Source
    wait_timeout_minutes: float = Field(
        default=60,
        ge=0,
        description="How long past its interval's end data may still arrive: a run waits until then, and fails "
        "at its first check once that deadline has passed (0: data is there when the interval ends, or never)",
    )
    poke_interval_seconds: float = Field(default=60, ge=1, description="How often readiness is checked meanwhile")

    @model_validator(mode="before")
    @classmethod
    def _legacy_local_files(cls, value: Any) -> Any:
        """`kind: local_files` with events_path and labels_path: one CSV per hour, as before."""
        if not isinstance(value, dict) or value.get("kind") != "local_files":
            return value
        rest = {k: v for k, v in value.items() if k not in {"kind", "events_path", "labels_path"}}
        layout = "dt={start:%Y-%m-%d}/hour={start:%H}.csv"
        for name in ("events_path", "labels_path"):
            if not isinstance(value.get(name), str):
                raise ValueError(f"kind local_files needs {name}")
            _check_location(value[name])
        return {
            **rest,
            "events": {"kind": "files", "path": f"{value['events_path'].rstrip('/')}/{layout}"},
            # Label feeds are sparse by nature: an hour with no label file has no labels.
            "labels": {
                "kind": "files",
                "path": f"{value['labels_path'].rstrip('/')}/{layout}",
                "when_missing": "empty",
            },
        }


class LabelSpec(_Strict):
    column: str
    delay_hours: int = Field(ge=0, description="How long after as_of the label becomes known")
    arrived_at_column: str = "arrived_at"
    classes: list[str] | None = Field(
        default=None,
        description="task multiclass: the class names, in the order of the model's probability outputs",
    )

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            duplicated = sorted({c for c in value if value.count(c) > 1})
            if duplicated or len(value) < 2 or any(not c.strip() for c in value):
                raise ValueError(f"{value}: give at least two distinct, non-empty class names")
        return value


def check_objective(task: Task, params: dict[str, Any], where: str) -> None:
    """XGBoost parameters fit the task: an objective it understands, no num_class of their own."""
    objective = params.get("objective")
    if objective is not None and objective not in task.objectives:
        raise ValueError(
            f"{where}.objective '{objective}' does not fit task '{task}'; use one of {list(task.objectives)}"
        )
    if "num_class" in params:
        raise ValueError(f"{where}.num_class is set from label.classes; remove it")


class FeatureSpec(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _non_empty_and_disjoint(self) -> FeatureSpec:
        if not self.numeric and not self.categorical:
            raise ValueError("at least one numeric or categorical feature is required")
        overlap = set(self.numeric) & set(self.categorical)
        if overlap:
            raise ValueError(f"columns listed as both numeric and categorical: {sorted(overlap)}")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


# The fields of a cron expression as croniter expands them: a list of values, or ["*"] for any.
CRON_FIELDS = {"minute": 0, "hour": 1, "second": 5}


def fires_only_at(expression: str, **fields: int) -> bool:
    """Whether a valid cron expression fires only when each named field has the given value, read
    from its expanded fields (stepping through firings cost ~80 ms a spec, and every task parses one)."""
    from croniter import croniter

    expanded = croniter(expression).expanded
    return all(
        CRON_FIELDS[name] >= len(expanded) or expanded[CRON_FIELDS[name]] == [value] for name, value in fields.items()
    )


def first_firing(expression: str, wanted: Callable[[datetime], bool]) -> datetime:
    """The first time from 2026 on that a cron expression fires with `wanted` true, for an error message."""
    from croniter import croniter

    fires = croniter(expression, datetime(2026, 1, 1, tzinfo=UTC))
    firings: Iterator[datetime] = (fires.get_next(datetime) for _ in range(100_000))
    return next(at for at in firings if wanted(at))


class ScheduleSpec(_Strict):
    """Cron expressions (UTC). Each must fire on whole hours: a task reads exactly the hourly
    partitions its interval covers, and an interval that starts mid-hour would cut one in two."""

    train: str = "0 2 * * *"
    score: str = "0 * * * *"
    backtest: str = "0 4 * * *"

    @field_validator("train", "score", "backtest")
    @classmethod
    def _whole_hours(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"'{value}' is not a valid cron expression (five fields: minute hour day month weekday)")
        if not fires_only_at(value, minute=0, second=0):
            at = first_firing(value, lambda at: bool(at.minute or at.second))
            when = f"{at:%H:%M:%S}".removesuffix(":00")
            raise ValueError(
                f"'{value}' fires at {when}, inside an hour: intervals must start and end on whole "
                "hours, the partitions tasks read (use minute 0, e.g. '0 4 * * *')"
            )
        return value


class TrainingSpec(_Strict):
    window_days: int = Field(default=7, ge=1)
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    num_boost_round: int = Field(default=500, ge=1)
    early_stopping_rounds: int = Field(default=25, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    queue: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The Celery queue of the train task: a GPU worker serves `train` in docker-compose.yml",
    )
    min_rows: int = Field(default=1000, ge=10)
    params: dict[str, float | int | str] = Field(default_factory=dict)


class GateSpec(_Strict):
    """How a challenger earns `champion`: see pipelines/stages/gate.py for the statistics."""

    metric: str = Field(
        default="auc",
        description="binary: auc (default), logloss, brier, rmse (of the probability); regression: rmse (default), "
        "mae, r2; multiclass: logloss (default), accuracy, macro_f1. Each is judged in its own direction "
        "(pipelines/core/tasks.py: METRICS)",
    )
    mode: Literal["enabled", "dry_run", "manual"] = Field(
        default="enabled",
        description="enabled: promote on a passing verdict; dry_run: decide and record, move nothing; "
        "manual: a passing verdict waits for a human approval in the Airflow UI",
    )
    min_improvement: float = Field(
        default=0.0, ge=0, description="The improvement's lower confidence bound must exceed this (metric units)"
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)
    seed: int = Field(default=0, description="Seeds the bootstrap, so a re-run reaches the same verdict")
    min_holdout_rows: int = Field(
        default=500, ge=50, description="Fewer fresh holdout rows than this and the champion is kept"
    )
    max_holdout_rows: int = Field(
        default=100_000, ge=1000, description="A larger fresh holdout is sampled down to this; bounds the gate's time"
    )
    slices: list[str] = Field(default_factory=list, description="Categorical features whose values must not regress")
    slice_tolerance: float = Field(default=0.02, ge=0, description="The most a slice may get worse (metric units)")
    min_slice_rows: int = Field(default=200, ge=10, description="Smaller slices are reported but not judged")
    beat_base_rate: bool = Field(
        default=True,
        description="Every promotion, the first included, needs the candidate to beat its task's trivial "
        "baseline on the holdout (the training base rate, class priors or mean), with the same bootstrap "
        "confidence; otherwise it is registered but not promoted",
    )
    second_hearing_cohorts: int = Field(
        default=7,
        ge=0,
        description="A kept challenger whose replay (the backtest's) beat the champion on the same rows over at "
        "least this many whole cohorts, by the same threshold and a bootstrap over cohorts, is proposed for "
        "promotion in this mode by the backtest DAG; 0: never",
    )

    @field_validator("metric")
    @classmethod
    def _a_gate_metric(cls, value: str) -> str:
        judged = [m.name for m in METRICS.values() if m.gate_for]
        if value not in judged:
            raise ValueError(f"'{value}' is no metric a gate judges by; use one of {judged}")
        return value


# Evidently's drift tests by the column types they accept (a unit test checks these against its registry).
NUMERIC_DRIFT_TESTS = (
    "anderson",
    "cramer_von_mises",
    "ed",
    "es",
    "empirical_mmd",
    "ks",
    "mannw",
    "t_test",
    "wasserstein",
)
CATEGORICAL_DRIFT_TESTS = ("chisquare", "fisher_exact", "g_test", "TVD", "z")
ANY_TYPE_DRIFT_TESTS = ("hellinger", "jensenshannon", "kl_div", "psi")
# Tests whose score is a p-value (drift below the threshold); the others are distances (drift at or
# above it). From each test's own verdict in evidently/legacy/calculations/stattests/.
P_VALUE_DRIFT_TESTS = frozenset(
    {"anderson", "chisquare", "cramer_von_mises", "es", "fisher_exact", "g_test", "ks", "mannw", "empirical_mmd",
     "t_test", "TVD", "z"}
)  # fmt: skip
DriftTest = Literal[
    "anderson", "cramer_von_mises", "ed", "es", "empirical_mmd", "ks", "mannw", "t_test", "wasserstein",
    "chisquare", "fisher_exact", "g_test", "TVD", "z",
    "hellinger", "jensenshannon", "kl_div", "psi",
]  # fmt: skip


class ColumnDriftTest(_Strict):
    """One column's drift test, instead of the one Evidently picks for its type and size."""

    method: DriftTest | None = Field(default=None, description="An Evidently drift test (stattest) name")
    threshold: float | None = Field(
        default=None, gt=0, description="p-value tests: drift below it; distances (psi, wasserstein, ...): at or above"
    )

    @model_validator(mode="after")
    def _something_set(self) -> ColumnDriftTest:
        if self.method is None and self.threshold is None:
            raise ValueError("set a method, a threshold or both")
        return self


class DriftReference(_Strict):
    """What a monitored window is compared with. `training`: the sample stored with the serving
    model. `window`: the published raw data of a fixed period (a known-good season). `same_period`:
    the published raw data of the monitored window `offset_days` earlier (7 for weekly, 364 for
    yearly seasonality, same weekday); while that period has no data, the training sample."""

    kind: Literal["training", "window", "same_period"] = "training"
    start: datetime | None = None
    end: datetime | None = None
    offset_days: int | None = Field(default=None, ge=1)

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> DriftReference:
        window = self.start is not None or self.end is not None
        if self.kind == "window" and not (self.start and self.end and self.start < self.end):
            raise ValueError("kind 'window' needs start < end")
        if self.kind == "same_period" and self.offset_days is None:
            raise ValueError("kind 'same_period' needs offset_days (e.g. 7 or 364)")
        if (self.kind != "window" and window) or (self.kind != "same_period" and self.offset_days is not None):
            takes = {"training": "no other field", "window": "start and end", "same_period": "offset_days"}
            raise ValueError(f"kind '{self.kind}' takes {takes[self.kind]}")
        return self


class DriftSpec(_Strict):
    """When drift is real and persistent enough to retrain: see pipelines/stages/drift_policy.py."""

    columns: list[str] | None = Field(default=None, description="Features tested for drift (default: every feature)")
    exclude: list[str] = Field(default_factory=list, description="Features never tested (e.g. calendar features)")
    tests: dict[str, ColumnDriftTest] = Field(default_factory=dict, description="Per-column test and threshold")
    reference: DriftReference = Field(default_factory=DriftReference)
    # Effect sizes, not p-values: a p-value test treats every row as independent, so with hundreds of
    # rows sharing one hourly reading any two days differ "significantly".
    num_method: DriftTest = Field(default="wasserstein", description="Test of numeric features (and the score)")
    num_threshold: float = Field(default=0.1, gt=0, description="Its threshold (normed Wasserstein: share of a std)")
    cat_method: DriftTest = Field(default="jensenshannon", description="Test of categorical features")
    cat_threshold: float = Field(default=0.1, gt=0, description="Its threshold")
    calibrate: bool = Field(
        default=True,
        description="Raise a distance's threshold to how far the reference's own partitions (days or hours) are "
        "from the rest of it (three times their median), so seasonality and values repeated within a day are not "
        "drift; not for a column whose reference changed inside it (its two halves in time differ)",
    )

    drift_share: float = Field(
        default=0.5, gt=0, le=1, description="A window drifted when at least this share of its feature columns did"
    )
    reference_rows: int = Field(default=5000, ge=100, description="Training rows kept as the drift reference")
    max_current_rows: int = Field(
        default=50_000,
        ge=100,
        description="Scored rows sampled (seeded) per report: Evidently's time grows faster than linearly",
    )
    windows: int = Field(default=6, ge=1, description="M: the policy looks at the last M monitored windows")
    drifted_windows: int = Field(default=3, ge=1, description="N: retrain when N of the last M windows drifted")
    cooldown_hours: int = Field(
        default=24, ge=0, description="No drift-triggered retraining within this many hours of the previous one"
    )

    @model_validator(mode="after")
    def _n_of_m(self) -> DriftSpec:
        if self.drifted_windows > self.windows:
            raise ValueError(f"drifted_windows ({self.drifted_windows}) cannot exceed windows ({self.windows})")
        return self


class BacktestSpec(_Strict):
    lookback_days: int = Field(default=7, ge=1, description="Cohorts (days of as_of) recomputed each run")
    slices: list[str] = Field(
        default_factory=list, description="Categorical features whose values get their own backtest metrics"
    )
    replay_intervals: int = Field(
        default=48, ge=1, description="The challenger replays the logged inputs of this many latest matured hours"
    )


class ModelSpec(_Strict):
    # The project the spec file lies in (its suite lies there too); None for a spec built in code,
    # whose suite is then the current project's (PIPELINES_PROJECT, or around the current directory).
    _project: Project | None = PrivateAttr(default=None)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$")
    description: str = ""
    owner: str = "data-team"
    start_date: datetime
    partition: Literal["hour", "day"] = Field(
        default="hour", description="The unit data is read, validated, published and scored in (UTC hours or days)"
    )
    task: Task = Field(
        default=Task.BINARY,
        description="binary (a 0/1 label, a probability), multiclass (label.classes, a probability per class) or "
        "regression (a numeric label, a value)",
    )
    source: SourceSpec
    entity_key: str
    timestamp: str
    label: LabelSpec
    features: FeatureSpec
    suite: str = Field(description="The expectation suite: expectations/<suite>.json")
    validation_policy: Literal["block", "warn", "quarantine"] = Field(
        default="block",
        description="block: a failing delivery is not published and the run fails; warn: published anyway; "
        "quarantine: rows breaking a row-level expectation are kept aside, the rest published",
    )
    schedules: ScheduleSpec = Field(default_factory=ScheduleSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    backtest: BacktestSpec = Field(default_factory=BacktestSpec)

    @model_validator(mode="before")
    @classmethod
    def _gate_metric_of_task(cls, value: Any) -> Any:
        """Without gate.metric, the task's own default (auc, rmse or logloss)."""
        if not isinstance(value, dict):
            return value
        task, gate = value.get("task", "binary"), {} if value.get("gate") is None else value["gate"]
        if task not in set(Task) or not isinstance(gate, dict) or "metric" in gate:
            return value  # an unknown task or a gate that is no mapping: their fields' own errors name them
        return {**value, "gate": {**gate, "metric": Task(task).gate_metrics[0]}}

    def training_window(self, end: datetime) -> tuple[datetime, datetime]:
        """The whole partitions of the training window before `end` (the train run's data interval end):
        a daily model trained at 02:00 learns from the days up to midnight."""
        end = floor_to_partition(end, self.partition)
        return end - timedelta(days=self.training.window_days), end

    @field_validator("start_date")
    @classmethod
    def _tz_aware(cls, value: datetime) -> datetime:
        # A naive start date is ambiguous; we read it as UTC rather than the machine's zone.
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @field_validator("suite")
    @classmethod
    def _suite_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value) or ".." in value:
            raise ValueError(
                f"'{value}' must be a suite name (letters, digits, '_', '-', '.'), the file expectations/<suite>.json"
            )
        return value

    @model_validator(mode="after")
    def _columns_distinct(self) -> ModelSpec:
        special = {self.entity_key, self.timestamp, self.label.column}
        clash = special & set(self.features.all)
        if clash:
            raise ValueError(f"key, timestamp or label column also listed as a feature: {sorted(clash)}")
        if self.partition == "day" and not fires_only_at(self.schedules.score, hour=0):
            at = first_firing(self.schedules.score, lambda at: bool(at.hour))
            raise ValueError(
                f"schedules.score '{self.schedules.score}' fires at {at:%H:%M}, inside a day: a daily model "
                "scores whole days (use '0 0 * * *')"
            )
        self._check_task()
        self._check_drift_columns()
        for field_name, slices in (("gate.slices", self.gate.slices), ("backtest.slices", self.backtest.slices)):
            unknown = [s for s in slices if s not in self.features.categorical]
            if unknown:
                raise ValueError(f"{field_name} {unknown} must be listed in features.categorical")
        return self

    def _check_task(self) -> None:
        check_objective(self.task, self.training.params, "training.params")
        if self.gate.metric not in self.task.gate_metrics:
            raise ValueError(
                f"gate.metric '{self.gate.metric}' does not judge a {self.task} model; "
                f"use one of {list(self.task.gate_metrics)}"
            )
        if self.task.has_classes != (self.label.classes is not None):
            raise ValueError(
                "task multiclass needs label.classes (the class names)"
                if self.task.has_classes
                else f"label.classes is for task multiclass, not {self.task}"
            )

    @property
    def objective(self) -> str:
        """The XGBoost objective: the spec's training.params.objective, else the task's default."""
        return str(self.training.params.get("objective", self.task.objectives[0]))

    def _check_drift_columns(self) -> None:
        drift = self.drift
        for field_name, names in (
            ("drift.columns", drift.columns or []), ("drift.exclude", drift.exclude), ("drift.tests", list(drift.tests)),
        ):  # fmt: skip
            unknown = [c for c in names if c not in self.features.all]
            if unknown:
                raise ValueError(f"{field_name} {unknown} must be features (features.numeric or features.categorical)")
        if not self.drift_columns:
            raise ValueError("drift.columns and drift.exclude leave no feature to test for drift")
        reference = drift.reference
        for bound in (reference.start, reference.end):
            if bound is not None and bound != floor_to_partition(bound, self.partition):
                raise ValueError(f"drift.reference {bound.isoformat()} is not on a whole {self.partition}")
        untested = [c for c in drift.tests if c not in self.drift_columns]
        if untested:
            raise ValueError(f"drift.tests {untested} name columns that drift.columns/drift.exclude leave out")
        for column, test in drift.tests.items():
            numeric = column in self.features.numeric
            allowed = (*ANY_TYPE_DRIFT_TESTS, *(NUMERIC_DRIFT_TESTS if numeric else CATEGORICAL_DRIFT_TESTS))
            if test.method is not None and test.method not in allowed:
                raise ValueError(
                    f"drift.tests.{column}: '{test.method}' does not test a {'numeric' if numeric else 'categorical'} "
                    f"column; use one of {sorted(allowed)}"
                )

    @property
    def suite_path(self) -> Path:
        """The suite file: `expectations/<suite>.json` of the spec's own project."""
        return (self._project or find_project()).suite_path(self.suite)

    @property
    def drift_columns(self) -> list[str]:
        """The features the monitor tests for drift, in spec order."""
        chosen = self.drift.columns if self.drift.columns is not None else self.features.all
        return [c for c in self.features.all if c in chosen and c not in self.drift.exclude]


def load_spec(path: Path | str) -> ModelSpec:
    """Parse and validate one spec file; SpecError names the file and each bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: spec file not found") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '<root>'}': {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise SpecError(f"{path}: invalid model spec: {problems}") from exc
    if spec.name != path.stem:
        raise SpecError(f"{path}: field 'name' is '{spec.name}' but the file is named '{path.stem}.yaml'")
    spec._project = project_of_spec(path) or find_project()
    check_suite(spec, path)
    return spec


def suite_columns(suite: dict[str, Any]) -> set[str]:
    """The columns a suite knows: its table-level column set or list, else every column it checks."""
    table: set[str] = set()
    named: set[str] = set()
    for expectation in suite.get("expectations") or []:
        kwargs = expectation.get("kwargs") or {}
        if expectation.get("type") in {
            "expect_table_columns_to_match_set",
            "expect_table_columns_to_match_ordered_list",
        }:
            table |= set(kwargs.get("column_set") or kwargs.get("column_list") or [])
        named |= {kwargs["column"]} if isinstance(kwargs.get("column"), str) else set()
        named |= set(kwargs.get("column_list") or [])
    return table or named


def check_suite(spec: ModelSpec, path: Path) -> None:
    """The spec's suite exists, is JSON, and knows every column the spec reads from the source."""
    suite_path = spec.suite_path
    try:
        suite = json.loads(suite_path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: field 'suite': '{spec.suite}' has no file {suite_path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: field 'suite': {suite_path} is not valid JSON: {exc}") from exc
    if not isinstance(suite, dict):
        raise SpecError(f"{path}: field 'suite': {suite_path} is not a suite (a JSON object with 'expectations')")
    known = suite_columns(suite)
    needed = {
        "entity_key": [spec.entity_key],
        "timestamp": [spec.timestamp],
        "features.numeric": spec.features.numeric,
        "features.categorical": spec.features.categorical,
    }
    unknown = [
        f"{field} {[c for c in columns if c not in known]}" for field, columns in needed.items() if set(columns) - known
    ]
    if unknown:
        raise SpecError(
            f"{path}: {'; '.join(unknown)} not among the columns of suite '{spec.suite}' ({suite_path}): "
            "every column the model reads must be validated; add it to the suite or fix the name"
        )


def spec_paths(specs_dir: Path) -> list[Path]:
    return sorted(specs_dir.glob("*.yaml"))
