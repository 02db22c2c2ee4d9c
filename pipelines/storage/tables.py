"""The project's tables (SQLAlchemy 2 Core). SQLite by default, PostgreSQL at scale, same code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Subquery,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
)

from pipelines.core.tasks import METRICS

if TYPE_CHECKING:  # imported where frames are written: the DAG files import this module's constants
    pass

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("model_version", String(32), nullable=False),
    # binary: the probability; regression: the value; multiclass: the predicted class's probability
    Column("score", Float, nullable=False),
    Column("features_sha256", String(64), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    Column("scored_at", DateTime(timezone=True), nullable=False),
    # How many of the row's categorical inputs the model never saw in training (scored as missing).
    Column("unseen_categories", Integer),
    # Multiclass only: the predicted class, and every class's probability as a JSON object {class: p}.
    Column("predicted_class", String(256)),
    Column("class_probabilities", Text),
    # Time first: an interval's rows go in at the end of the index, and per-interval reads use it too.
    UniqueConstraint("model_name", "as_of", "entity_id", name="uq_predictions_key"),
)

# What served is never lost: a logged prediction that a later scoring replaces (another version, chosen
# explicitly) is copied here, whole, in the same transaction, before it is replaced or removed.
predictions_history = Table(
    "predictions_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    *[Column(c.name, c.type, nullable=c.nullable) for c in predictions.columns],
    Column("superseded_at", DateTime(timezone=True), nullable=False),
    Column("superseded_by_run", String(250), nullable=False),
    Index("ix_predictions_history_as_of", "model_name", "as_of"),
)

labels = Table(
    "labels",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("label", Float),  # binary 0/1 or a regression value
    Column("label_class", String(256)),  # a multiclass label, by its class name
    Column("arrived_at", DateTime(timezone=True), nullable=False),
    # Every delivery of a key is kept: the label as known at T is the latest one that arrived before T.
    # Time first, as the predictions' key: reads by as_of range (the backtest's) use it.
    UniqueConstraint("model_name", "as_of", "entity_id", "arrived_at", name="uq_labels_delivery"),
)

backtest_metrics = Table(
    "backtest_metrics",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("cohort", String(10), nullable=False),  # the as_of date, YYYY-MM-DD
    Column("model_version", String(32), nullable=False),
    # logged: the scores the serving model gave; replay: a challenger scoring the same logged inputs
    Column("scored_by", String(8), nullable=False),
    Column("slice_column", String(128), nullable=False),  # ALL for the whole cohort
    Column("slice_value", String(256), nullable=False),
    Column("n", Integer, nullable=False),  # the cohort's predictions that had a label at labels_as_of
    # All of the cohort's logged predictions (labelled or not): coverage is n / predictions. NULL on
    # replayed rows (the challenger replays labelled rows only) and on rows stored before 0006.
    Column("predictions", Integer),
    # Every prediction of the cohort was past its label delay at labels_as_of: its labels are all in.
    Column("complete", Boolean),
    # The task's metrics (pipelines/core/metrics.py); the others stay NULL.
    Column("positives", Integer),  # binary
    *(Column(name, Float) for name in METRICS),  # a new metric's column also needs its migration
    Column("mean_label", Float),
    Column("class_recall", Text),  # JSON {class: recall} of the classes among the labels
    Column("mean_score", Float),
    Column("labels_as_of", DateTime(timezone=True), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    UniqueConstraint(
        "model_name",
        "cohort",
        "model_version",
        "scored_by",
        "slice_column",
        "slice_value",
        "labels_as_of",  # append-only history: each backtest adds the cohorts as its labels knew them
        name="uq_backtest_metrics_key",
    ),
)

validation_runs = Table(
    "validation_runs",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("dag_id", String(250), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    Column("suite", String(128), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("failed_expectations", Text, nullable=False),
    Column("result_path", Text, nullable=False),
    Column("validated_at", DateTime(timezone=True), nullable=False),
    # Policy 'quarantine': rows checked, rows kept aside (and where), the rest went on.
    Column("rows_checked", Integer),
    Column("rows_quarantined", Integer),
    Column("quarantine_uri", Text),
    UniqueConstraint("model_name", "dag_id", "interval_start", "interval_end", name="uq_validation_key"),
)

drift_reports = Table(
    "drift_reports",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("reference_rows", Integer, nullable=False),
    Column("current_rows", Integer, nullable=False),
    Column("columns", Integer, nullable=False),
    Column("drifted_columns", Integer, nullable=False),
    Column("drift_share", Float, nullable=False),
    Column("dataset_drift", Boolean, nullable=False),
    Column("drifted_column_names", Text, nullable=False),
    Column("prediction_drift", Boolean),  # did the model's score distribution drift too
    Column("verdict", Text),  # JSON: the drift policy's verdict at this window (pipelines/stages/drift_policy.py)
    Column("report_path", Text, nullable=False),
    Column("reference", Text),  # what the window was compared with (drift.reference); NULL before 0003
    Column("dag_run_id", String(250), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "interval_start", "interval_end", name="uq_drift_reports_key"),
)

drift_metrics = Table(
    "drift_metrics",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("column_name", String(128), nullable=False),
    Column("stattest", String(64), nullable=False),
    Column("drift_score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("drifted", Boolean, nullable=False),
    UniqueConstraint("model_name", "interval_start", "interval_end", "column_name", name="uq_drift_metrics_key"),
)

# An Evidently model-quality report per monitored window whose labels had arrived (pipelines/stages/quality.py).
quality_reports = Table(
    "quality_reports",
    metadata,
    Column("model_name", String(64), nullable=False),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("task", String(16), nullable=False),
    Column("rows", Integer, nullable=False),  # labelled predictions in the window
    Column("metrics", Text, nullable=False),  # JSON: the task's metrics (pipelines/core/metrics.py)
    Column("report_path", Text),  # NULL: Evidently could not judge the window (a class absent)
    Column("labels_as_of", DateTime(timezone=True), nullable=False),
    Column("dag_run_id", String(250), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "interval_start", "interval_end", name="uq_quality_reports_key"),
)

model_events = Table(
    "model_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(64), nullable=False),
    Column("event", String(32), nullable=False),  # alias_moved | gate_decision | approval
    Column("alias", String(32)),
    Column("from_version", String(32)),
    Column("to_version", String(32)),
    Column("reason", Text, nullable=False),
    Column("dag_run_id", String(250)),
    Column("actor", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("details", Text),  # JSON: the full gate decision record, for gate_decision events
)


def count_rows(engine: Engine, table: Table, model_name: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(table).where(table.c.model_name == model_name)
            ).scalar_one()
        )


BACKTEST_KEY = ("model_name", "cohort", "model_version", "scored_by", "slice_column", "slice_value")


def current_backtest(model_name: str, slice_column: str | None = None) -> Subquery:
    """The model's backtest rows that count: per cohort x version x scorer x slice, the one computed
    from the most labelled predictions (the latest `labels_as_of` on a tie). History stays in the table."""
    b = backtest_metrics
    rank = (
        func.row_number()
        .over(partition_by=[b.c[k] for k in BACKTEST_KEY], order_by=[b.c.n.desc(), b.c.labels_as_of.desc()])
        .label("rank_in_cohort")
    )
    ranked = select(b, rank).where(b.c.model_name == model_name)
    if slice_column is not None:
        ranked = ranked.where(b.c.slice_column == slice_column)
    subquery = ranked.subquery()
    return (
        select(*[subquery.c[c.name] for c in b.columns])
        .where(subquery.c.rank_in_cohort == 1)
        .subquery("current_backtest")
    )
